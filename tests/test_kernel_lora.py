"""The SGMV multi-LoRA kernels against `lora_delta_reference`: per dtype and rank, rows of no LoRA, one
slot, tiles spanning many short rows (temporal blocks), strided x, and a real STDiT with `LoRALinear`s
running through `set_lora_kernel`. On CPU the kernels run under the Triton interpreter (tiny shapes);
the full-size cases need CUDA."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402

from kdcvg.kernels import lora as kernel_mod  # noqa: E402
from kdcvg.kernels.lora import install, lora_delta, lora_delta_triton  # noqa: E402
from kdcvg.models.stdit import STDiT, STDiTConfig  # noqa: E402
from kdcvg.priors import lora as lora_mod  # noqa: E402
from kdcvg.priors.lora import LoRABatch, attach, lora_delta_reference, set_lora_kernel, use_lora  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# max |kernel - reference| / max |reference|: fp32 differs by summation order only; bf16 also by where the
# rank-r intermediate and the output are rounded (one bf16 ulp is 2^-8 of the value)
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
INDEX = [2, -1, 0, 2, 1]
SCALE = [0.5, 3.0, 1.0, -2.0, 1.5]

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="full-size kernel tests need CUDA")


def operands(
    rows: int, n: int, d_in: int, d_out: int, rank: int, slots: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x in `dtype`; fp32 stacks as `LoRAWeights.detached` keeps them, scaled so outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, d_in, generator=g).to(DEVICE, dtype)
    a = (torch.randn(slots, rank, d_in, generator=g) / d_in**0.5).to(DEVICE)
    b = (torch.randn(slots, d_out, rank, generator=g) / rank**0.5).to(DEVICE)
    return x, a, b


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-30)).item()


def check(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = lora_delta_triton(x, a, b, index, scale)
    ref = lora_delta_reference(x, a, b, index, scale)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL[x.dtype], rel_err(out, ref)
    none = index < 0
    if none.any():
        assert torch.count_nonzero(out[none]) == 0  # exactly zero, whatever the scale
    return out


def on_device(values: list[int] | list[float], dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [4, 16])
def test_mixed_slots_match_reference(dtype: torch.dtype, rank: int) -> None:
    x, a, b = operands(5, 7, 32, 48, rank, 3, dtype)
    out = check(x, a, b, on_device(INDEX), on_device(SCALE, torch.float32))
    # each row really uses its own slot: row 0 and row 3 share slot 2 with scales 0.5 and -2
    assert (
        rel_err(
            out[3], lora_delta_reference(x[3:4], a[2:3], b[2:3], on_device([0]), on_device([-2.0], torch.float32))[0]
        )
        <= TOL[dtype]
    )


def test_no_lora_rows_give_zeros() -> None:
    x, a, b = operands(4, 7, 32, 48, 16, 2, torch.float32)
    out = lora_delta_triton(x, a, b, on_device([-1, -1, -1, -1]), on_device([1.0, 2.0, 3.0, 4.0], torch.float32))
    assert out.shape == (4, 7, 48) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_slot_every_row(dtype: torch.dtype) -> None:
    x, a, b = operands(3, 9, 48, 32, 8, 1, dtype, seed=1)
    check(x, a, b, on_device([0, 0, 0]), on_device([1.0, 0.25, -1.0], torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiles_span_many_short_rows(dtype: torch.dtype) -> None:
    """Temporal blocks: many rows of few tokens; one slot's tokens fill several tiles whose edges fall
    inside rows, and the rows of a slot are scattered over the batch."""
    x, a, b = operands(60, 5, 32, 40, 8, 2, dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    index = torch.randint(-1, 2, (60,), generator=g).to(DEVICE)
    block_m = kernel_mod.tile_config(dtype).block_m
    assert (index == 0).sum() * 5 > block_m and block_m % 5  # slot 0 needs several tiles, cut inside rows
    check(x, a, b, index, torch.rand(60, generator=g).to(DEVICE) + 0.5)


def test_strided_x_and_bf16_stacks() -> None:
    x, a, b = operands(7, 5, 32, 48, 16, 3, torch.bfloat16, seed=4)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # rows not contiguous
    assert not strided.is_contiguous()
    index, scale = on_device([1, 2, -1, 0, 0, 2, 1]), on_device([1.0, -1.0, 5.0, 0.5, 2.0, 1.5, -0.5], torch.float32)
    out = check(strided, a.bfloat16(), b.bfloat16(), index, scale)
    torch.testing.assert_close(out, lora_delta_triton(x, a.bfloat16(), b.bfloat16(), index, scale), rtol=0, atol=0)


def test_rejects_mismatched_shapes() -> None:
    x, a, b = operands(2, 3, 32, 48, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        lora_delta_triton(x, a[:, :, :16], b, on_device([0, 1]), on_device([1.0, 1.0], torch.float32))
    with pytest.raises(ValueError, match="must be"):
        lora_delta_triton(x, a, b, on_device([0, 1, 0]), on_device([1.0, 1.0], torch.float32))


def test_dispatch_and_install() -> None:
    x, a, b = operands(5, 7, 32, 48, 4, 3, torch.float32)
    index, scale = on_device(INDEX), on_device(SCALE, torch.float32)
    ref = lora_delta_reference(x, a, b, index, scale)
    assert rel_err(lora_delta(x, a, b, index, scale), ref) <= TOL[torch.float32]
    try:
        install()
        assert lora_mod._kernel is lora_delta
    finally:
        set_lora_kernel(None)
    assert lora_mod._kernel is lora_delta_reference


# --- through the model ------------------------------------------------------------------------------------

HIDDEN = 32


def tiny_dit() -> STDiT:
    """A tiny STDiT whose zero-initialised layers get values, so every q projection reaches the output."""
    torch.manual_seed(0)
    cfg = STDiTConfig(
        in_channels=4, latent_frames=4, latent_height=4, latent_width=4, hidden=HIDDEN, depth=1, heads=2, text_dim=16
    )
    dit = STDiT(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return dit.to(DEVICE)


@pytest.fixture
def restore_kernel():
    yield
    set_lora_kernel(None)


def test_lora_linear_through_the_kernel(restore_kernel) -> None:
    """Spatial blocks pass (B*T, S) rows and temporal ones (B*S, T): the same DiT output either way."""
    dit = tiny_dit()
    layers = attach(dit)
    assert len(layers) == 2  # the spatial and the temporal block's q
    g = torch.Generator().manual_seed(5)
    a = {k: (torch.randn(2, 8, HIDDEN, generator=g) * 0.3).to(DEVICE) for k in layers}
    b = {k: (torch.randn(2, HIDDEN, 8, generator=g) * 0.3).to(DEVICE) for k in layers}
    batch = LoRABatch(a, b, on_device([1, -1, 0]), on_device([1.0, 1.0, 0.5], torch.float32))
    x = torch.randn(3, 4, 4, 4, 4, generator=g).to(DEVICE)
    t = torch.rand(3, generator=g).to(DEVICE)
    y = torch.randn(3, 5, 16, generator=g).to(DEVICE)
    mask = torch.ones(3, 5, dtype=torch.bool, device=DEVICE)
    with torch.no_grad():
        base = dit(x, t, y, mask)
        with use_lora(batch):
            want = dit(x, t, y, mask)
            set_lora_kernel(lora_delta_triton)
            got = dit(x, t, y, mask)
    assert rel_err(got, want) <= 1e-5
    moved = (want - base).abs().amax(dim=(1, 2, 3, 4))
    assert moved[0] > 1e-3 and moved[2] > 1e-3  # the LoRAs change their samples...
    assert moved[1] == 0  # ...and the sample of no LoRA is untouched


# --- full size (CUDA) -------------------------------------------------------------------------------------


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_wan21_size(dtype: torch.dtype) -> None:
    """Wan2.1 dims: d 1536, rank 128, 8 rows of two LoRAs and none, 4096 tokens each."""
    x, a, b = operands(8, 4096, 1536, 1536, 128, 2, dtype)
    index = on_device([0, 1, -1, 0, 1, 1, -1, 0])
    scale = on_device([1.0, 0.5, 1.0, -1.0, 2.0, 0.75, 3.0, 1.25], torch.float32)
    check(x, a, b, index, scale)


@cuda_only
def test_dispatch_keeps_autograd_on_cuda() -> None:
    """A LoRA being distilled needs gradients: the dispatch then takes the reference path."""
    x, a, b = operands(2, 16, 64, 64, 8, 1, torch.float32)
    a.requires_grad_(True)
    out = lora_delta(x, a, b, on_device([0, -1]), on_device([1.0, 1.0], torch.float32))
    out.square().sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
