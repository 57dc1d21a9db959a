"""The fused adaLN kernels (LayerNorm + modulate, gated residual) against their PyTorch references and
against `STDiTBlock`'s own modules: per-sample and per-frame broadcasts, non-power-of-two widths, strided
inputs, mixed dtypes. On CPU the kernels run under the Triton interpreter (tiny shapes); the full-size
cases need CUDA."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from kdcvg.kernels.adaln import (  # noqa: E402
    gated_residual,
    gated_residual_reference,
    gated_residual_triton,
    layernorm_modulate,
    layernorm_modulate_reference,
    layernorm_modulate_triton,
    modulate,  # noqa: E402
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# max |kernel - reference| / max |reference|: fp32 differs by summation order; bf16 also because the
# reference rounds after the norm, the product and the sum, the kernel once (one bf16 ulp is 2^-8)
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}
B, T, S = 2, 3, 5

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="full-size kernel tests need CUDA")


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, std: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * std).to(DEVICE, dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-30)).item()


def assert_matches(out: torch.Tensor, ref: torch.Tensor, tol: float | None = None) -> None:
    """Same shape and dtype, contiguous, within `tol` (default: the output dtype's)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    assert rel_err(out, ref) <= (TOL[ref.dtype] if tol is None else tol), rel_err(out, ref)


def modulation(d: int, frames: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """shift, scale of shape (B, frames, 1, d): frames 1 per sample, T per frame."""
    return randn(B, frames, 1, d, dtype=dtype, seed=seed), randn(B, frames, 1, d, dtype=dtype, seed=seed + 1, std=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 48])
@pytest.mark.parametrize("frames", [1, T], ids=["per-sample", "per-frame"])
def test_layernorm_modulate_matches_reference(dtype: torch.dtype, d: int, frames: int) -> None:
    x = randn(B, T, S, d, dtype=dtype, seed=1, std=3.0) + 2.0  # a non-zero mean to remove
    shift, scale = modulation(d, frames, dtype, seed=2)
    assert_matches(layernorm_modulate_triton(x, shift, scale), layernorm_modulate_reference(x, shift, scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 48])
@pytest.mark.parametrize("frames", [1, T], ids=["per-sample", "per-frame"])
def test_gated_residual_matches_reference(dtype: torch.dtype, d: int, frames: int) -> None:
    x = randn(B, T, S, d, dtype=dtype, seed=3)
    y = randn(B, T, S, d, dtype=dtype, seed=4)
    gate = randn(B, frames, 1, d, dtype=dtype, seed=5)
    assert_matches(gated_residual_triton(x, gate, y), gated_residual_reference(x, gate, y))


def test_reference_is_the_block_computation() -> None:
    """The reference is what `STDiTBlock` computes with its norm1 and `modulate`."""
    x = randn(B, T, S, 48, seed=6)
    shift, scale = modulation(48, T, torch.float32, seed=7)
    norm1 = nn.LayerNorm(48, eps=1e-6, elementwise_affine=False)
    want = modulate(norm1(x), shift, scale)
    torch.testing.assert_close(layernorm_modulate_reference(x, shift, scale), want, rtol=0, atol=0)
    assert_matches(layernorm_modulate_triton(x, shift, scale), want)


def test_wide_non_power_of_two_rows() -> None:
    """d = 864 (72 * 12): one row per program, the upper columns of the block masked off."""
    x = randn(1, 2, 3, 864, seed=8, std=2.0)
    shift, scale = randn(1, 2, 1, 864, seed=9), randn(1, 2, 1, 864, seed=10)
    assert_matches(layernorm_modulate_triton(x, shift, scale), layernorm_modulate_reference(x, shift, scale))
    gate, y = randn(1, 1, 1, 864, seed=11), randn(1, 2, 3, 864, seed=12)
    assert_matches(gated_residual_triton(x, gate, y), gated_residual_reference(x, gate, y))


def test_strided_operands() -> None:
    """The temporal attention's output is a (B, S, T, d) tensor seen as (B, T, S, d); x a strided slice."""
    y = randn(B, S, T, 32, seed=13).transpose(1, 2)
    x = randn(B, T, S, 64, seed=14)[..., ::2]
    gate = randn(B, 1, 1, 32, seed=15)
    assert not y.is_contiguous() and not x.is_contiguous()
    assert_matches(gated_residual_triton(x, gate, y), gated_residual_reference(x, gate, y))
    shift, scale = modulation(32, T, torch.float32, seed=16)
    assert_matches(layernorm_modulate_triton(x, shift, scale), layernorm_modulate_reference(x, shift, scale))


def test_mixed_dtypes_promote_like_the_reference() -> None:
    """bf16 activations with fp32 modulation give fp32, as torch's promotion does for the reference (which
    rounds LN(x) to bf16 first, the kernel not: so the bf16 tolerance)."""
    x = randn(B, T, S, 32, dtype=torch.bfloat16, seed=17)
    shift, scale = modulation(32, 1, torch.float32, seed=18)
    out = layernorm_modulate_triton(x, shift, scale)
    assert out.dtype == torch.float32
    assert_matches(out, layernorm_modulate_reference(x, shift, scale), TOL[torch.bfloat16])


def test_fewer_leading_dims() -> None:
    """(B, N, d) tokens with a (B, 1, d) modulation, as a final layer's flattened tokens would be."""
    x = randn(B, 7, 32, seed=19)
    shift, scale = randn(B, 1, 32, seed=20), randn(B, 1, 32, seed=21)
    assert_matches(layernorm_modulate_triton(x, shift, scale), layernorm_modulate_reference(x, shift, scale))


def test_rejects_what_does_not_broadcast() -> None:
    x = randn(B, T, S, 32, seed=22)
    with pytest.raises(ValueError, match="broadcast"):
        layernorm_modulate_triton(x, randn(B, T, 1, 16, seed=23), randn(B, T, 1, 32, seed=24))


def test_dispatch_matches_reference() -> None:
    x = randn(B, T, S, 48, seed=25)
    shift, scale = modulation(48, T, torch.float32, seed=26)
    assert_matches(layernorm_modulate(x, shift, scale), layernorm_modulate_reference(x, shift, scale))
    gate, y = randn(B, T, 1, 48, seed=27), randn(B, T, S, 48, seed=28)
    assert_matches(gated_residual(x, gate, y), gated_residual_reference(x, gate, y))
    # a modulation larger than x is the reference's business (it broadcasts x up), never the kernel's
    wide = randn(B, T, 2, 48, seed=29)
    one = randn(B, T, 1, 48, seed=30)
    assert layernorm_modulate(one, wide, wide).shape == (B, T, 2, 48)


# --- full size (CUDA) -------------------------------------------------------------------------------------


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("frames", [1, 21], ids=["per-sample", "per-frame"])
def test_wan21_size(dtype: torch.dtype, frames: int) -> None:
    """Wan2.1 at 480p, 81 frames: d 1536, 21 latent frames of 1560 tokens (32760 per sample), 2 samples."""
    x = randn(2, 21, 1560, 1536, dtype=dtype, seed=31, std=4.0)
    shift = randn(2, frames, 1, 1536, dtype=dtype, seed=32)
    scale = randn(2, frames, 1, 1536, dtype=dtype, seed=33, std=0.5)
    assert_matches(layernorm_modulate(x, shift, scale), layernorm_modulate_reference(x, shift, scale))
    y = randn(2, 21, 1560, 1536, dtype=dtype, seed=34)
    assert_matches(gated_residual(x, scale, y), gated_residual_reference(x, scale, y))


@cuda_only
def test_dispatch_keeps_autograd_on_cuda() -> None:
    x = randn(B, T, S, 64, seed=35).requires_grad_(True)
    shift, scale = modulation(64, T, torch.float32, seed=36)
    layernorm_modulate(x, shift, scale).sum().backward()
    assert x.grad is not None
