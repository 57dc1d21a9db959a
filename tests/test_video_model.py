"""The embedded video model: STDiT structure, rectified-flow math, CFG batching, save/load, shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcvg.models import rectified_flow as rf
from kdcvg.models.autoencoder import AutoencoderConfig
from kdcvg.models.stdit import STDiT, STDiTConfig
from kdcvg.models.video_model import ModelLoadError, VideoModel

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "server" / "kdcvg" / "weights" / "kdcvg-tiny"


def tiny_dit_config(**kw) -> STDiTConfig:
    base = dict(
        in_channels=4, latent_frames=4, latent_height=4, latent_width=4, hidden=32, depth=2, heads=2, text_dim=16
    )
    return STDiTConfig(**(base | kw))


def tiny_model(**kw) -> VideoModel:
    torch.manual_seed(0)
    ae = AutoencoderConfig(latent_channels=4, channels=(8, 8, 8), latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    return VideoModel(ae, tiny_dit_config(**kw), frames=8, height=32, width=32, null_text=torch.randn(2, 16)).eval()


def text(b: int = 2, length: int = 5, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randn(b, length, dim)
    m = torch.ones(b, length, dtype=torch.bool)
    m[0, 3:] = False
    return y, m


def randomise_zero_inits(dit: STDiT) -> None:
    """Zero-initialised layers (outputs, frame MLP) would hide some paths; give them values."""
    with torch.no_grad():
        for p in dit.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)


def test_stdit_forward_shapes() -> None:
    dit = STDiT(tiny_dit_config())
    x = torch.randn(2, 4, 4, 4, 4)
    y, m = text()
    out = dit(x, torch.rand(2), y, m)
    assert out.shape == x.shape
    assert dit.config.num_tokens == 4 * 2 * 2


def test_self_attention_has_separate_qkv_linears_in_every_block() -> None:
    dit = STDiT(tiny_dit_config())
    names = dict(dit.named_modules())
    for i, blk in enumerate(dit.blocks):
        for proj in ("q", "k", "v"):
            mod = names[f"blocks.{i}.attn.{proj}"]
            assert isinstance(mod, nn.Linear) and mod.in_features == mod.out_features == 32
        assert len({id(blk.attn.q), id(blk.attn.k), id(blk.attn.v)}) == 3
    # A LoRA on modules named "q" hits exactly the self-attentions (spatial and temporal), not the cross one.
    q_targets = [n for n, m in dit.named_modules() if n.split(".")[-1] == "q"]
    assert len(q_targets) == 2 * dit.config.depth
    assert [dit.blocks[i].temporal for i in range(len(dit.blocks))] == [False, True] * dit.config.depth


def test_rope_only_in_temporal_attention() -> None:
    dit = STDiT(tiny_dit_config())
    for blk in dit.blocks:
        assert (blk.attn.rope is not None) == blk.temporal
        assert not hasattr(blk.cross_attn, "rope")
    # Without RoPE attention is permutation-equivariant over its tokens; with it, it is not.
    x = torch.randn(3, 4, 32)
    perm = torch.tensor([2, 0, 3, 1])
    spatial, temporal = dit.blocks[0].attn, dit.blocks[1].attn
    torch.testing.assert_close(spatial(x[:, perm]), spatial(x)[:, perm])
    assert not torch.allclose(temporal(x[:, perm]), temporal(x)[:, perm], atol=1e-4)


def test_adaln_modulation_changes_output() -> None:
    dit = STDiT(tiny_dit_config())
    randomise_zero_inits(dit)
    x = torch.randn(1, 4, 4, 4, 4)
    y, m = text(1)
    a = dit(x, torch.tensor([0.2]), y, m)
    b = dit(x, torch.tensor([0.9]), y, m)
    assert not torch.allclose(a, b, atol=1e-4)  # the timestep reaches the output only via modulation
    with torch.no_grad():
        dit.blocks[0].scale_shift_table.add_(0.5)
    assert not torch.allclose(dit(x, torch.tensor([0.2]), y, m), a, atol=1e-4)
    # The frame-aware modulation gives frames different conditioning.
    assert not torch.allclose(
        dit(x, torch.tensor([0.2]), y, m, frame_conditioning=False), dit(x, torch.tensor([0.2]), y, m), atol=1e-4
    )
    mod = dit.frame_modulation(y, m, 4)
    assert mod.shape == (1, 4, 6 * 32) and not torch.allclose(mod[0, 0], mod[0, 1])


def test_text_mask_hides_padding() -> None:
    dit = STDiT(tiny_dit_config())
    randomise_zero_inits(dit)
    x = torch.randn(1, 4, 4, 4, 4)
    y, m = text(1)
    y2 = y.clone()
    y2[0, 3:] = 100.0  # padded positions
    torch.testing.assert_close(dit(x, torch.tensor([0.5]), y, m), dit(x, torch.tensor([0.5]), y2, m))


def test_shift_and_euler_math() -> None:
    assert rf.shift_timesteps(0.5, 3.0) == pytest.approx(0.75)
    assert rf.shift_timesteps(0.0, 4.0) == 0.0 and rf.shift_timesteps(1.0, 4.0) == 1.0
    assert rf.resolution_shift(512, base_tokens=128, base_shift=4.0) == pytest.approx(8.0)
    assert rf.resolution_shift(128, base_tokens=128, base_shift=4.0) == pytest.approx(4.0)
    torch.testing.assert_close(
        rf.sampling_timesteps(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    ts = rf.sampling_timesteps(4, 3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and ts[2] == pytest.approx(0.75)
    x = torch.tensor([1.0])
    torch.testing.assert_close(rf.euler_step(x, torch.tensor([2.0]), 0.75, 0.5), torch.tensor([0.5]))
    # Conventions: x_t = (1 - t) x0 + t noise; the exact velocity noise - x0 brings noise back to x0.
    x0, noise = torch.randn(3, 5), torch.randn(3, 5)
    xt = rf.add_noise(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(xt[:2], torch.stack([x0[0], noise[1]]))
    out = rf.sample(lambda x, t: noise - x0, noise, steps=7, guidance=1.0, shift=3.0)
    torch.testing.assert_close(out, x0)
    t = rf.sample_training_timesteps(20000, shift=1.0, generator=torch.Generator().manual_seed(0))
    t4 = rf.sample_training_timesteps(20000, shift=4.0, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.01 and t4.mean() > 0.7


def test_cfg_is_one_doubled_batch_per_step() -> None:
    calls = []

    def vfn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], t.shape[0]))
        v = torch.zeros_like(x)
        v[: x.shape[0] // 2] = 1.0  # cond rows
        return v

    noise = torch.zeros(3, 2)
    out = rf.sample(vfn, noise, steps=5, guidance=2.5, shift=1.0)
    assert calls == [(6, 6)] * 5
    # v = u + g (c - u) = 2.5 each step; dt sums to -1
    torch.testing.assert_close(out, torch.full((3, 2), -2.5))
    calls.clear()
    rf.sample(vfn, noise, steps=4, guidance=1.0)
    assert calls == [(3, 3)] * 4


def test_callback_raising_stops_within_one_step() -> None:
    model = tiny_model()
    calls = []
    orig = model.velocity

    def counting(*a):
        calls.append(1)
        return orig(*a)

    model.velocity = counting

    class Stop(Exception):
        pass

    def cb(step: int, total: int, x: torch.Tensor) -> None:
        assert total == 10
        if step == 3:
            raise Stop

    y, m = text(1)
    with pytest.raises(Stop):
        model.generate(y, m, steps=10, guidance=2.0, seed=1, callback=cb)
    assert len(calls) == 3


def test_generate_shapes_and_seed() -> None:
    model = tiny_model()
    randomise_zero_inits(model.dit)
    y, m = text(2)
    a = model.generate(y, m, steps=2, seed=5)
    assert a.shape == (2, 8, 32, 32, 3) and a.dtype == torch.uint8
    torch.testing.assert_close(model.generate(y, m, steps=2, seed=5), a)
    torch.testing.assert_close(model.generate(y[1:], m[1:], steps=2, seed=6), a[1:])  # row i uses seed + i


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    randomise_zero_inits(model.dit)
    model.save(tmp_path / "m", dtype=torch.float32)
    loaded = VideoModel.load(tmp_path / "m")
    y, m = text(2)
    x, t = torch.randn(2, 4, 4, 4, 4), torch.rand(2)
    torch.testing.assert_close(loaded.velocity(x, t, y, m), model.velocity(x, t, y, m), rtol=0, atol=0)
    torch.testing.assert_close(loaded.null_text, model.null_text)
    torch.testing.assert_close(loaded.generate(y, m, steps=2), model.generate(y, m, steps=2), rtol=0, atol=0)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dit"]["hidden"] == 32
    # bf16 storage (the default) loads to a close model
    model.save(tmp_path / "b")
    close = VideoModel.load(tmp_path / "b")
    torch.testing.assert_close(close.velocity(x, t, y, m), model.velocity(x, t, y, m), rtol=0.1, atol=0.1)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory not found"):
        VideoModel.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoModel.load(tmp_path / "empty")
    model = tiny_model()
    d = model.save(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())

    (d / "config.json").write_text(json.dumps(cfg | {"kind": "diffusers"}))
    with pytest.raises(ModelLoadError, match="kind"):
        VideoModel.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        VideoModel.load(d)
    bad = json.loads(json.dumps(cfg))
    bad["dit"]["hidden"] = 48
    bad["dit"]["heads"] = 2
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        VideoModel.load(d)
    bad = json.loads(json.dumps(cfg))
    bad["dit"]["latent_frames"] = 3
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="geometry"):
        VideoModel.load(d)
    bad = json.loads(json.dumps(cfg))
    bad["dit"]["bogus"] = 1
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="bogus"):
        VideoModel.load(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VideoModel.load(d)


def test_shipped_weights_generate(encoder) -> None:
    assert (SHIPPED / "config.json").is_file(), f"shipped weights missing in {SHIPPED}"
    size = (SHIPPED / "model.safetensors").stat().st_size
    assert size < 40 * 1024 * 1024
    model = VideoModel.load(SHIPPED)
    assert (model.frames, model.height, model.width) == (16, 64, 64) and model.fps > 0
    states, mask = encoder.encode_tokens(["red bottle of juice: spins to show every angle"])
    out = model.generate(torch.from_numpy(states), torch.from_numpy(mask), steps=3, guidance=2.0, seed=0)
    assert out.shape == (1, 16, 64, 64, 3) and out.dtype == torch.uint8
    assert out.float().std() > 1.0  # not a blank clip
