"""DistillPrior: the motion loss (Eq. 10, both readings), preparing the reference clip, and training a LoRA on
a tiny model with progress, cancellation and a frozen base model."""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np
import pytest
import torch

from kdcvg.data.creatives import make_creative
from kdcvg.models.autoencoder import AutoencoderConfig
from kdcvg.models.stdit import STDiTConfig
from kdcvg.models.video_model import VideoModel
from kdcvg.priors.distill import LOSSES, DistillCancelled, DistillConfig, distill, motion_loss, prepare_clip
from kdcvg.priors.lora import LoRALinear, LoRAWeights, targets

TEXT_DIM = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --- the motion loss --------------------------------------------------------------------------------------


def test_motion_loss_is_zero_for_identical_inputs() -> None:
    v = torch.randn(2, 3, 4, 2, 2)
    for kind in ("paper", "code"):
        assert motion_loss(v, v.clone(), kind).item() == pytest.approx(0.0, abs=1e-6)


def test_motion_loss_range_and_scale_invariance() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randn(2, 3, 5, 2, 3, generator=g)
        b = torch.randn(2, 3, 5, 2, 3, generator=g)
        for kind in ("paper", "code"):
            value = motion_loss(a, b, kind).item()
            assert 0.0 <= value <= 2.0
        paper = motion_loss(a, b, "paper")
        torch.testing.assert_close(motion_loss(3.5 * a, b, "paper"), paper)
        torch.testing.assert_close(motion_loss(a, 0.01 * b, "paper"), paper)
        # Only the residuals count: adding the same frame to every frame changes nothing.
        torch.testing.assert_close(motion_loss(a + torch.randn(2, 3, 1, 2, 3, generator=g), b, "paper"), paper)
    a = torch.randn(1, 2, 4, 2, 2, generator=g)
    assert motion_loss(a, -a, "paper").item() == pytest.approx(2.0, abs=1e-5)  # opposite motion
    assert motion_loss(a, -a, "code").item() == pytest.approx(0.0, abs=1e-5)  # |residual| hides the direction


def test_motion_loss_by_hand() -> None:
    # (B=1, C=1, T=3, h=1, w=2): two positions, three frames each.
    pred = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 2.0]]).reshape(1, 1, 3, 1, 2)  # rows: frames
    true = torch.tensor([[0.0, 1.0], [-2.0, 1.0], [-4.0, 4.0]]).reshape(1, 1, 3, 1, 2)
    assert pred[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 3.0] and true[0, 0, :, 0, 1].tolist() == [1.0, 1.0, 4.0]
    # code: |residuals| per position over the frame pairs: position 0 (1, 2) vs (2, 2), position 1 (2, 0) vs (0, 3).
    code = ((1 - 6 / (math.sqrt(5) * math.sqrt(8))) + (1 - 0.0)) / 2
    assert motion_loss(pred, true, "code").item() == pytest.approx(code, abs=1e-6)
    # paper: signed residuals per frame pair over the positions: pair 0 (1, 2) vs (-2, 0), pair 1 (2, 0) vs (-2, 3).
    paper = ((1 + 2 / (math.sqrt(5) * 2)) + (1 + 4 / (2 * math.sqrt(13)))) / 2
    assert motion_loss(pred, true, "paper").item() == pytest.approx(paper, abs=1e-6)


def test_motion_loss_rejects_bad_shapes_and_kinds() -> None:
    a = torch.randn(1, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="one shape"):
        motion_loss(a, torch.randn(1, 2, 4, 2, 2))
    with pytest.raises(ValueError, match="T>=2"):
        motion_loss(a[:, :, :1], a[:, :, :1])
    with pytest.raises(ValueError, match="T>=2"):
        motion_loss(a[0], a[0])
    for kind in ("x0", "mse", ""):
        with pytest.raises(ValueError, match="unknown motion loss"):
            motion_loss(a, a, kind)


# --- the reference clip -----------------------------------------------------------------------------------


def test_prepare_clip_keeps_a_full_frame_path_as_is() -> None:
    frames = make_creative(0, motions=["slide_left"]).frames  # the product crosses the whole frame
    assert frames.shape == (16, 64, 64, 3)
    out = prepare_clip(frames, 16, 64, 64)
    assert out.shape == (16, 64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, frames)


def test_prepare_clip_zooms_in_on_a_small_path() -> None:
    frames = make_creative(0, motions=["pulse"]).frames  # stays in the middle of the frame
    out = prepare_clip(frames, 16, 64, 64)
    assert out.shape == (16, 64, 64, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, frames)


def test_prepare_clip_picks_keyframes_and_resizes_a_long_large_clip() -> None:
    small = make_creative(1, motions=["slide_right"]).frames
    idx = np.round(np.linspace(0, 15, 40)).astype(int)
    frames = np.stack([cv2.resize(small[i], (128, 128), interpolation=cv2.INTER_LINEAR) for i in idx])
    assert frames.shape == (40, 128, 128, 3)
    out = prepare_clip(frames, 16, 64, 64)
    assert out.shape == (16, 64, 64, 3) and out.dtype == np.uint8
    # Keyframes from the clip, downsized: each output frame is close to some input frame.
    down = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.int16)
    for f in out.astype(np.int16):
        assert np.abs(down - f).mean(axis=(1, 2, 3)).min() < 2.0
    # Non-square model frames.
    assert prepare_clip(frames, 8, 48, 32).shape == (8, 32, 48, 3)


def test_prepare_clip_stretches_a_short_clip() -> None:
    frames = make_creative(2, motions=["slide_left"]).frames[::3][:5]
    assert frames.shape[0] == 5
    out = prepare_clip(frames, 16, 64, 64)
    assert out.shape == (16, 64, 64, 3)
    # Every output frame repeats an input frame, in order, all five used.
    used = [next(i for i in range(5) if np.array_equal(f, frames[i])) for f in out]
    assert used == sorted(used) and set(used) == set(range(5)) and used[0] == 0 and used[-1] == 4


def test_prepare_clip_rejects_a_single_frame() -> None:
    frames = make_creative(0).frames
    with pytest.raises(ValueError, match="at least two frames"):
        prepare_clip(frames[:1], 16, 64, 64)
    with pytest.raises(ValueError, match="at least two frames"):
        prepare_clip(frames[0], 16, 64, 64)


# --- distillation -----------------------------------------------------------------------------------------


def tiny_model() -> VideoModel:
    """8 frames of 32x32 through the frame-pair autoencoder give 4x4x4 latents: the smallest valid geometry."""
    torch.manual_seed(0)
    ae = AutoencoderConfig(latent_channels=4, channels=(8, 8, 8), latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    dit = STDiTConfig(
        in_channels=4, latent_frames=4, latent_height=4, latent_width=4, hidden=32, depth=1, heads=2, text_dim=TEXT_DIM
    )
    model = VideoModel(ae, dit, frames=8, height=32, width=32, null_text=torch.randn(2, TEXT_DIM)).eval()
    with torch.no_grad():  # zero-initialised output layers would give the LoRA no gradient at all
        for p in model.dit.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    model.requires_grad_(False)  # as the server does
    return model


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return make_creative(3, motions=["bounce"]).frames


def text() -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randn(6, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    m = torch.ones(6, dtype=torch.bool)
    m[4:] = False
    return y, m


@pytest.mark.parametrize("loss", LOSSES)
def test_distill_trains_a_lora_and_leaves_the_model_alone(clip: np.ndarray, loss: str) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y, m = text()
    calls: list[tuple[int, int, float]] = []
    cfg = DistillConfig(rank=4, steps=5, learning_rate=1e-2, loss=loss, seed=3)
    w, stats = distill(model, clip, y, m, cfg, progress=lambda *a: calls.append(a))

    assert [(s, total) for s, total, _ in calls] == [(i, 5) for i in range(1, 6)]
    losses = [value for *_, value in calls]
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0.0 for v in losses)
    assert all(v <= 2.0 for v in losses)  # 1 - cosine
    assert isinstance(w, LoRAWeights) and w.rank == 4
    w.check(model.dit)
    assert w.meta["loss"] == loss and w.meta["steps"] == "5" and w.meta["seed"] == "3"
    assert float(w.meta["final_loss"]) == pytest.approx(np.mean(losses), abs=1e-6)
    assert stats["first_loss"] == losses[0] and stats["final_loss"] == pytest.approx(np.mean(losses))
    assert stats["seconds"] > 0
    assert not any(p.requires_grad for p in w.parameters())  # detached
    assert any(v.abs().sum() > 0 for v in w.b.values())  # B started at zero: the steps did train it

    # The base model: wrapped for LoRAs, but its weights unchanged and never given gradients.
    assert all(isinstance(blk.attn.q, LoRALinear) for blk in model.dit.blocks)
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    for k, v in before.items():
        key = k.replace(".attn.q.", ".attn.q.base.")
        assert torch.equal(after[key if key in after else k], v), k


def test_distill_is_deterministic_for_a_seed(clip: np.ndarray) -> None:
    y, m = text()
    cfg = DistillConfig(rank=2, steps=2, learning_rate=1e-2, timesteps_per_step=1, seed=7)
    a, _ = distill(tiny_model(), clip, y, m, cfg)
    b, _ = distill(tiny_model(), clip, y[None], m[None], cfg)  # batched text gives the same
    for k in a.a:
        torch.testing.assert_close(a.a[k], b.a[k])
        torch.testing.assert_close(a.b[k], b.b[k])


def test_distill_clamps_the_rank(clip: np.ndarray) -> None:
    model = tiny_model()
    y, m = text()
    w, _ = distill(model, clip, y, m, DistillConfig(rank=1000, steps=1, timesteps_per_step=1))
    assert w.rank == 32 == min(min(s) for s in targets(model.dit).values())


def test_distill_stops_when_asked(clip: np.ndarray) -> None:
    model = tiny_model()
    y, m = text()
    cfg = DistillConfig(rank=2, steps=5, timesteps_per_step=1)
    stop = threading.Event()
    stop.set()
    calls: list[int] = []
    with pytest.raises(DistillCancelled, match="step 0 of 5"):
        distill(model, clip, y, m, cfg, progress=lambda s, *_: calls.append(s), stop=stop)
    assert calls == []

    stop = threading.Event()

    def progress(step: int, total: int, loss: float) -> None:
        calls.append(step)
        if step == 2:
            stop.set()

    with pytest.raises(DistillCancelled, match="step 2 of 5"):
        distill(model, clip, y, m, cfg, progress=progress, stop=stop)
    assert calls == [1, 2]
    assert all(p.grad is None for p in model.parameters())


def test_distill_rejects_bad_settings(clip: np.ndarray) -> None:
    model = tiny_model()
    y, m = text()
    assert {"paper", "code", "x0"} <= set(LOSSES)
    with pytest.raises(ValueError, match="unknown motion loss 'l2'"):
        distill(model, clip, y, m, DistillConfig(loss="l2", steps=1))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        distill(model, clip, y, m, DistillConfig(steps=0))
    with pytest.raises(ValueError, match="at least two frames"):
        distill(model, clip[:1], y, m, DistillConfig(steps=1))
