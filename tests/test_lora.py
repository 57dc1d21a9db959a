"""Motion-prior LoRAs: the BGMV update, per-row multi-LoRA batching vs merged weights, thread-local batches,
attaching to the DiT, and the LoRA file format (save/load/check)."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdcvg.models.stdit import STDiT, STDiTConfig
from kdcvg.priors import lora as lora_mod
from kdcvg.priors.lora import (
    FORMAT,
    LoRABatch,
    LoRALinear,
    LoRAWeights,
    PriorFileError,
    attach,
    fingerprint,
    lora_delta_reference,
    max_rank,
    set_lora_kernel,
    targets,
    use_lora,
)

HIDDEN = 32
TEXT_DIM = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def tiny_config(**kw) -> STDiTConfig:
    base = dict(
        in_channels=4,
        latent_frames=4,
        latent_height=4,
        latent_width=4,
        hidden=HIDDEN,
        depth=1,
        heads=2,
        text_dim=TEXT_DIM,
    )
    return STDiTConfig(**(base | kw))


def tiny_dit(seed: int = 0, **kw) -> STDiT:
    """A tiny STDiT whose zero-initialised layers (output, cross-attention proj, frame MLP) get values, so
    a change in any q projection reaches the output."""
    torch.manual_seed(seed)
    dit = STDiT(tiny_config(**kw)).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return dit


def inputs(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 4, 4, 4, generator=g)
    t = torch.rand(b, generator=g)
    y = torch.randn(b, 5, TEXT_DIM, generator=g)
    m = torch.ones(b, 5, dtype=torch.bool)
    m[0, 3:] = False
    return x, t, y, m


def random_lora(dit: nn.Module, rank: int, seed: int) -> LoRAWeights:
    """A LoRA with non-zero A and B (a freshly initialised one has B = 0 and changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    w = LoRAWeights.init(dit, rank, generator=g).detached()
    for name in w.b:
        w.a[name] = torch.randn(w.a[name].shape, generator=g) * 0.5
        w.b[name] = torch.randn(w.b[name].shape, generator=g) * 0.5
    return w


def stack(loras: list[LoRAWeights], rank: int, index: list[int], scale: list[float]) -> LoRABatch:
    """Slot stacks of `loras`, each zero-padded to `rank`."""
    names = list(loras[0].a)
    a, b = {}, {}
    for name in names:
        d_in = loras[0].a[name].shape[1]
        d_out = loras[0].b[name].shape[0]
        a[name] = torch.zeros(len(loras), rank, d_in)
        b[name] = torch.zeros(len(loras), d_out, rank)
        for s, w in enumerate(loras):
            a[name][s, : w.rank] = w.a[name]
            b[name][s, :, : w.rank] = w.b[name]
    return LoRABatch(a, b, torch.tensor(index, dtype=torch.long), torch.tensor(scale))


def merged(base: STDiT, w: LoRAWeights, scale: float) -> STDiT:
    """A copy of the un-attached `base` with the LoRA merged into its q weights: W + scale * B @ A."""
    out = copy.deepcopy(base)
    with torch.no_grad():
        for name in w.a:
            layer = out.get_submodule(name)
            assert type(layer) is nn.Linear
            layer.weight += scale * w.b[name] @ w.a[name]
    return out


# --- the low-rank update ----------------------------------------------------------------------------------


def loop_delta(x, a_list, b_list, index, scale) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        s = int(index[i])
        if s < 0:
            rows.append(torch.zeros(x.shape[1], b_list[0].shape[0], dtype=x.dtype))
        else:
            rows.append(x[i] @ a_list[s].T @ b_list[s].T * scale[i])
    return torch.stack(rows)


def test_lora_delta_reference_equals_per_row_matmuls() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 6, generator=g)
    a = torch.randn(3, 2, 6, generator=g)
    b = torch.randn(3, 9, 2, generator=g)
    index = torch.tensor([2, -1, 0, 2, 1])
    scale = torch.tensor([0.5, 3.0, 1.0, -2.0, 1.5])
    out = lora_delta_reference(x, a, b, index, scale)
    assert out.shape == (5, 7, 9) and out.dtype == x.dtype
    torch.testing.assert_close(out, loop_delta(x, list(a), list(b), index, scale))
    assert torch.count_nonzero(out[1]) == 0  # index -1: exactly zero whatever the scale
    assert out[0].abs().sum() > 0


def test_lora_delta_all_rows_without_lora_is_zero() -> None:
    x = torch.randn(3, 4, 6)
    out = lora_delta_reference(x, torch.randn(2, 2, 6), torch.randn(2, 5, 2), torch.full((3,), -1), torch.ones(3))
    assert torch.equal(out, torch.zeros(3, 4, 5))


def test_lora_delta_mixed_ranks_zero_padded_equal_unpadded() -> None:
    g = torch.Generator().manual_seed(1)
    d_in, d_out = 6, 5
    a1, b1 = torch.randn(2, d_in, generator=g), torch.randn(d_out, 2, generator=g)  # rank 2
    a2, b2 = torch.randn(3, d_in, generator=g), torch.randn(d_out, 3, generator=g)  # rank 3
    pad = 5
    a = torch.zeros(2, pad, d_in)
    b = torch.zeros(2, d_out, pad)
    a[0, :2], b[0, :, :2] = a1, b1
    a[1, :3], b[1, :, :3] = a2, b2
    x = torch.randn(4, 3, d_in, generator=g)
    index = torch.tensor([1, 0, -1, 1])
    scale = torch.tensor([1.0, 0.25, 1.0, 2.0])
    padded = lora_delta_reference(x, a, b, index, scale)
    torch.testing.assert_close(padded, loop_delta(x, [a1, a2], [b1, b2], index, scale))
    # Each row against its own single-slot, unpadded stack.
    for i, (aa, bb) in enumerate([(a2, b2), (a1, b1), (a1, b1), (a2, b2)]):
        one = lora_delta_reference(x[i : i + 1], aa[None], bb[None], index[i : i + 1].clamp(max=0), scale[i : i + 1])
        if index[i] < 0:
            one = torch.zeros_like(one)
        torch.testing.assert_close(padded[i : i + 1], one)


def test_lora_delta_returns_the_input_dtype() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    a, b = torch.randn(1, 2, 4), torch.randn(1, 5, 2)
    out = lora_delta_reference(x, a, b, torch.tensor([0, -1]), torch.ones(2))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0], x[0] @ a[0].double().T @ b[0].double().T)


# --- attaching to the DiT ---------------------------------------------------------------------------------


def test_attach_wraps_only_self_attention_q_and_is_idempotent() -> None:
    dit = tiny_dit(depth=2)
    found = attach(dit)
    assert set(found) == {f"blocks.{i}.attn.q" for i in range(4)}
    for i, blk in enumerate(dit.blocks):
        assert isinstance(blk.attn.q, LoRALinear) and found[f"blocks.{i}.attn.q"] is blk.attn.q
        assert type(blk.attn.q.base) is nn.Linear
        for other in (blk.attn.k, blk.attn.v, blk.attn.proj, blk.cross_attn.q_linear, blk.cross_attn.kv_linear):
            assert type(other) is nn.Linear
    assert sum(isinstance(m, LoRALinear) for m in dit.modules()) == 4

    again = attach(dit)
    assert again.keys() == found.keys() and all(again[k] is found[k] for k in found)
    assert sum(isinstance(m, LoRALinear) for m in dit.modules()) == 4  # not wrapped twice
    assert all(type(m.base) is nn.Linear for m in again.values())

    assert targets(dit) == {name: (HIDDEN, HIDDEN) for name in found}
    assert max_rank(dit) == HIDDEN
    wrapper = found["blocks.0.attn.q"]
    assert wrapper.in_features == wrapper.out_features == HIDDEN and wrapper.weight is wrapper.base.weight


def test_attach_needs_self_attention() -> None:
    with pytest.raises(ValueError, match="no self-attention"):
        attach(nn.Sequential(nn.Linear(4, 4)))


def test_fingerprint_follows_config_and_weights() -> None:
    a, same_a, b = tiny_dit(seed=0), tiny_dit(seed=0), tiny_dit(seed=1)
    for dit in (a, same_a, b):
        attach(dit)
    assert fingerprint(a) == fingerprint(same_a)
    assert fingerprint(a) != fingerprint(b)  # another checkpoint of the same architecture
    c = tiny_dit(mlp_ratio=2.0)
    d = tiny_dit(depth=2)
    attach(c), attach(d)
    assert len({fingerprint(a), fingerprint(c), fingerprint(d)}) == 3
    with torch.no_grad():
        same_a.blocks[0].attn.k.weight[0, 0] += 1e-3
    assert fingerprint(same_a) != fingerprint(a)


def test_attached_model_without_batch_is_exactly_the_base() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    x, t, y, m = inputs(2)
    with torch.no_grad():
        want = base(x, t, y, m)
        torch.testing.assert_close(dit(x, t, y, m), want, rtol=0, atol=0)
        with use_lora(None):
            torch.testing.assert_close(dit(x, t, y, m), want, rtol=0, atol=0)
        # A batch without entries for these layers leaves them alone too.
        with use_lora(LoRABatch({}, {}, torch.zeros(2, dtype=torch.long), torch.ones(2))):
            torch.testing.assert_close(dit(x, t, y, m), want, rtol=0, atol=0)


def test_fresh_lora_is_a_no_op_and_trainable() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    w = LoRAWeights.init(dit, 4, generator=torch.Generator().manual_seed(0))
    assert w.rank == 4 and set(w.a) == set(targets(dit))
    assert all(p.requires_grad for p in w.parameters()) and len(w.parameters()) == 2 * len(w.a)
    assert all(torch.count_nonzero(v) == 0 for v in w.b.values())
    assert all(v.abs().sum() > 0 for v in w.a.values())
    assert w.nbytes == len(w.a) * (4 * HIDDEN + HIDDEN * 4) * 4
    x, t, y, m = inputs(2)
    with torch.no_grad(), use_lora(w.as_batch(2)):
        torch.testing.assert_close(dit(x, t, y, m), base(x, t, y, m), rtol=0, atol=0)
    d = w.detached(torch.float64)
    assert not any(p.requires_grad for p in d.parameters()) and d.a[next(iter(d.a))].dtype == torch.float64


def test_as_batch_equals_merged_weights() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    w = random_lora(dit, 3, seed=5)
    batch = w.as_batch(2, scale=0.5)
    assert batch.index.tolist() == [0, 0] and batch.scale.tolist() == [0.5, 0.5]
    assert all(v.shape == (1, 3, HIDDEN) for v in batch.a.values())
    x, t, y, m = inputs(2)
    with torch.no_grad(), use_lora(batch):
        out = dit(x, t, y, m)
    with torch.no_grad():
        want = merged(base, w, 0.5)(x, t, y, m)
        assert (out - base(x, t, y, m)).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg_doubled", [False, True], ids=["plain", "cfg-doubled"])
def test_multi_lora_batch_equals_per_request_merged_weights(cfg_doubled: bool) -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    loras = [random_lora(dit, 2, seed=11), random_lora(dit, 4, seed=12)]  # mixed ranks, padded to 4
    index, scale = [0, -1, 1], [0.7, 1.0, 1.5]
    x, t, y, m = inputs(3)
    if cfg_doubled:
        # The sampler's doubled batch: conditioned rows, then each row's unconditioned twin with its LoRA.
        null_y = torch.zeros_like(y)
        null_y[:, :2] = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(9))
        null_m = torch.zeros_like(m)
        null_m[:, :2] = True
        x, t = torch.cat([x, x]), torch.cat([t, t])
        y, m = torch.cat([y, null_y]), torch.cat([m, null_m])
        index, scale = index + index, scale + scale
    batch = stack(loras, 4, index, scale)
    with torch.no_grad(), use_lora(batch):
        out = dit(x, t, y, m)
    assert out.shape == x.shape
    with torch.no_grad():
        plain = base(x, t, y, m)
        for i, (slot, s) in enumerate(zip(index, scale, strict=True)):
            model = merged(base, loras[slot], s) if slot >= 0 else base
            want = model(x[i : i + 1], t[i : i + 1], y[i : i + 1], m[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], want, rtol=1e-4, atol=1e-5)
            if slot >= 0:
                assert (out[i] - plain[i]).abs().max() > 1e-3
            else:
                torch.testing.assert_close(out[i], plain[i], rtol=1e-5, atol=1e-6)


def test_rows_that_do_not_split_over_samples_raise() -> None:
    dit = tiny_dit()
    attach(dit)
    w = random_lora(dit, 2, seed=3)
    x, t, y, m = inputs(1)  # 4 frames x 4 positions: 4 rows per attention; 3 samples do not divide them
    with torch.no_grad(), use_lora(w.as_batch(3)), pytest.raises(RuntimeError, match="do not split"):
        dit(x, t, y, m)


# --- thread-local batches and the kernel hook -----------------------------------------------------------------


def test_use_lora_is_thread_local_and_nests() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    w = random_lora(dit, 2, seed=4)
    x, t, y, m = inputs(2)
    with torch.no_grad():
        plain = base(x, t, y, m)
        with_lora = merged(base, w, 1.0)(x, t, y, m)
    seen: dict[str, object] = {}

    def other() -> None:
        seen["batch"] = getattr(lora_mod._active, "batch", None)
        with torch.no_grad():
            seen["out"] = dit(x, t, y, m)

    with torch.no_grad(), use_lora(w.as_batch(2)):
        th = threading.Thread(target=other)
        th.start()
        th.join()
        here = dit(x, t, y, m)
        with use_lora(None):
            torch.testing.assert_close(dit(x, t, y, m), plain, rtol=0, atol=0)
        torch.testing.assert_close(dit(x, t, y, m), here, rtol=0, atol=0)  # restored after the inner block
    assert seen["batch"] is None
    torch.testing.assert_close(seen["out"], plain, rtol=0, atol=0)
    torch.testing.assert_close(here, with_lora, rtol=1e-4, atol=1e-5)
    assert getattr(lora_mod._active, "batch", None) is None


def test_concurrent_threads_each_see_their_own_lora() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    loras = [random_lora(dit, 2, seed=21), random_lora(dit, 3, seed=22)]
    x, t, y, m = inputs(2)
    barrier = threading.Barrier(2, timeout=30)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with torch.no_grad(), use_lora(loras[k].as_batch(2)):
                barrier.wait()  # both batches are active at once
                for _ in range(3):
                    results[k] = dit(x, t, y, m)
                barrier.wait()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    with torch.no_grad():
        for k in range(2):
            torch.testing.assert_close(results[k], merged(base, loras[k], 1.0)(x, t, y, m), rtol=1e-4, atol=1e-5)


def test_set_lora_kernel_swaps_and_none_restores() -> None:
    dit = tiny_dit()
    base = copy.deepcopy(dit)
    attach(dit)
    w = random_lora(dit, 2, seed=6)
    x, t, y, m = inputs(2)
    calls: list[tuple[int, ...]] = []

    def zero_kernel(x, a, b, index, scale):
        calls.append(tuple(x.shape))
        return torch.zeros(*x.shape[:-1], b.shape[1], dtype=x.dtype)

    try:
        set_lora_kernel(zero_kernel)
        with torch.no_grad(), use_lora(w.as_batch(2)):
            out = dit(x, t, y, m)
    finally:
        set_lora_kernel(None)
    assert lora_mod._kernel is lora_delta_reference
    # one call per wrapped layer: the spatial block folds (B, T) into rows, the temporal one (B, S)
    assert calls == [(2 * 4, 2 * 2, HIDDEN), (2 * 2 * 2, 4, HIDDEN)]
    with torch.no_grad():
        torch.testing.assert_close(out, base(x, t, y, m), rtol=0, atol=0)
        with use_lora(w.as_batch(2)):
            restored = dit(x, t, y, m)
        torch.testing.assert_close(restored, merged(base, w, 1.0)(x, t, y, m), rtol=1e-4, atol=1e-5)


# --- the file format ------------------------------------------------------------------------------------------


@pytest.fixture
def attached() -> STDiT:
    dit = tiny_dit()
    attach(dit)
    return dit


def test_save_load_round_trip(attached: STDiT, tmp_path: Path) -> None:
    w = random_lora(attached, 3, seed=7)
    w.meta = {"base_model": fingerprint(attached), "final_loss": "0.125", "uid": "abc"}
    path = tmp_path / "sub" / "p.safetensors"
    w.save(path)
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["p.safetensors"]  # no temp left
    for dit in (attached, None):
        back = LoRAWeights.load(path, dit)
        assert back.rank == 3 and back.meta == w.meta
        assert back.a.keys() == w.a.keys() and back.b.keys() == w.b.keys()
        for k in w.a:
            assert torch.equal(back.a[k], w.a[k]) and torch.equal(back.b[k], w.b[k])
            assert back.a[k].dtype == torch.float32
    back.check(attached)
    # Without base_model metadata (a hand-made file) the fingerprint check does not apply.
    w.meta = {}
    w.save(path)
    assert LoRAWeights.load(path, attached).meta == {}


def test_save_overwrites_atomically(attached: STDiT, tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    random_lora(attached, 2, seed=1).save(path)
    second = random_lora(attached, 4, seed=2)
    second.save(path)
    assert LoRAWeights.load(path, attached).rank == 4
    assert not path.with_name(path.name + ".tmp").exists()


def test_check_rejects_wrong_layers_shapes_and_nan(attached: STDiT) -> None:
    good = random_lora(attached, 2, seed=8)
    good.check(attached)
    name = "blocks.0.attn.q"

    renamed = good.detached()
    renamed.a["blocks.0.attn.k"] = renamed.a.pop(name)
    renamed.b["blocks.0.attn.k"] = renamed.b.pop(name)
    with pytest.raises(PriorFileError, match=r"do not match the model.*missing \['blocks.0.attn.q'\]"):
        renamed.check(attached)

    no_b = good.detached()
    del no_b.b[name]
    with pytest.raises(PriorFileError, match="do not match the model"):
        no_b.check(attached)

    wide = good.detached()
    wide.a[name] = torch.randn(2, HIDDEN + 1)
    with pytest.raises(PriorFileError, match=r"blocks.0.attn.q has A \(2, 33\).*needs A \(2, 32\)"):
        wide.check(attached)

    wrong_rank = good.detached()
    wrong_rank.rank = 3
    with pytest.raises(PriorFileError, match="needs A"):
        wrong_rank.check(attached)

    for bad in (float("nan"), float("inf")):
        poisoned = good.detached()
        poisoned.b[name][0, 0] = bad
        with pytest.raises(PriorFileError, match="NaN or infinite"):
            poisoned.check(attached)

    deeper = tiny_dit(depth=2)
    attach(deeper)
    with pytest.raises(PriorFileError, match="unknown"):
        random_lora(deeper, 2, seed=1).check(attached)


def test_load_rejects_unreadable_files(attached: STDiT, tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    random_lora(attached, 2, seed=9).save(path)
    data = path.read_bytes()
    for label, content in [
        ("truncated", data[: len(data) // 2]),
        ("garbage", bytes(range(256)) * 3),
        ("empty", b""),
        ("json", b'{"not": "a lora"}'),
    ]:
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(PriorFileError, match=f"{label}.safetensors is not a readable LoRA file"):
            LoRAWeights.load(bad, attached)
    with pytest.raises(FileNotFoundError):
        LoRAWeights.load(tmp_path / "missing.safetensors", attached)


def test_load_rejects_other_formats(attached: STDiT, tmp_path: Path) -> None:
    other = tmp_path / "model.safetensors"
    save_file({"dit.blocks.0.attn.q.weight": torch.randn(HIDDEN, HIDDEN)}, str(other), metadata={"kind": "video"})
    with pytest.raises(PriorFileError, match=f"model.safetensors is not a {FORMAT} file"):
        LoRAWeights.load(other, attached)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(PriorFileError, match="format None"):
        LoRAWeights.load(bare, None)
    norank = tmp_path / "norank.safetensors"
    save_file({"x": torch.zeros(2)}, str(norank), metadata={"format": FORMAT, "rank": "four"})
    with pytest.raises(PriorFileError, match="no valid rank"):
        LoRAWeights.load(norank, None)


def test_load_rejects_shape_mismatch_and_other_base_model(attached: STDiT, tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    deeper = tiny_dit(depth=2)
    attach(deeper)
    random_lora(deeper, 2, seed=1).save(path)
    LoRAWeights.load(path)  # readable without a model to check against
    with pytest.raises(PriorFileError, match="do not match the model"):
        LoRAWeights.load(path, attached)

    # Same target layers and shapes, another base model: only the fingerprint tells them apart.
    sibling = tiny_dit(mlp_ratio=2.0)
    attach(sibling)
    assert targets(sibling) == targets(attached) and fingerprint(sibling) != fingerprint(attached)
    w = random_lora(sibling, 2, seed=2)
    w.meta = {"base_model": fingerprint(sibling)}
    w.save(path)
    LoRAWeights.load(path, sibling)
    with pytest.raises(PriorFileError, match=f"distilled on another base model \\({fingerprint(sibling)}"):
        LoRAWeights.load(path, attached)
    # The caller may pass the model's fingerprint it already has.
    LoRAWeights.load(path, attached, fingerprint(sibling))
    with pytest.raises(PriorFileError, match="this one is cafe"):
        LoRAWeights.load(path, sibling, "cafe")

    # Same architecture, other weights (a retrained checkpoint): refused as well.
    retrained = tiny_dit(seed=1)
    attach(retrained)
    w.meta = {"base_model": fingerprint(retrained)}
    w.save(path)
    LoRAWeights.load(path, retrained)
    with pytest.raises(PriorFileError, match="distilled on another base model"):
        LoRAWeights.load(path, attached)
