"""Fused adaLN of the STDiT blocks in Triton, beside the PyTorch references.

- `layernorm_modulate`: non-affine LayerNorm then `modulate`, LN(x) * (1 + scale) + shift, in one pass
  over x (the reference reads and writes the (B, T, S, d) activations three times).
- `gated_residual`: x + gate * y, the blocks' gated residual, in one pass (y may be a strided view, as the
  temporal attention's output is).

x is (B, T, S, d) (or fewer leading dims, read as leading 1s); shift, scale and gate broadcast to it:
(B, 1, 1, d) per sample or (B, T, 1, d) per frame in this model, though any broadcast works. The kernels
take the broadcast views' strides (0 on broadcast dims) and find each token row's (b, t, s) from its row
id, so the modulation tensors are never materialised at x's size.

Grid: one program per BLOCK_M token rows, each holding whole rows of BLOCK_D = next power of two >= d
columns (masked, so d need not be a power of two: 192, 864, 1536), BLOCK_M * BLOCK_D about 4096 elements
(2 rows at d = 1536). Statistics in fp32 (mean, then the centred variance, as torch does), the output
rounded once, in the dtype torch's type promotion gives the reference. The Triton paths have no backward;
the dispatch functions use the references for CPU tensors and whenever autograd needs the result.
"""

# Triton kernel arguments stay unannotated: Triton reads annotations as specialisation hints.
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kdcvg.kernels import dispatch

__all__ = [
    "modulate",
    "gated_residual",
    "gated_residual_reference",
    "gated_residual_triton",
    "layernorm_modulate",
    "layernorm_modulate_reference",
    "layernorm_modulate_triton",
]

MAX_D = 16384
TILE_ELEMENTS = 4096  # BLOCK_M * BLOCK_D per program
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN's modulation of normalised activations: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


def layernorm_modulate_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """`modulate(LayerNorm(x), shift, scale)` as `STDiTBlock` computes it (non-affine LayerNorm over d)."""
    return modulate(F.layer_norm(x, (x.shape[-1],), eps=eps), shift, scale)


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y."""
    return x + gate * y


@triton.jit
def _row_offsets(rows, T, S, stride_b, stride_t, stride_s):
    """Offsets of token rows (int64 ids of the flattened (B, T, S)) in a tensor of the given strides."""
    s = rows % S
    bt = rows // S
    return (bt // T) * stride_b + (bt % T) * stride_t + s * stride_s


@triton.jit
def _layernorm_modulate_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    out_ptr,
    n_rows,
    T,
    S,
    d,
    eps,
    sx_b,
    sx_t,
    sx_s,
    sx_d,
    sh_b,
    sh_t,
    sh_s,
    sh_d,
    sc_b,
    sc_t,
    sc_s,
    sc_d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]
    x_off = _row_offsets(rows, T, S, sx_b, sx_t, sx_s)[:, None] + cols[None, :] * sx_d
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / d
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / d
    rstd = 1.0 / tl.sqrt(var + eps)
    sh_off = _row_offsets(rows, T, S, sh_b, sh_t, sh_s)[:, None] + cols[None, :] * sh_d
    sc_off = _row_offsets(rows, T, S, sc_b, sc_t, sc_s)[:, None] + cols[None, :] * sc_d
    shift = tl.load(shift_ptr + sh_off, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + sc_off, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(
    x_ptr,
    gate_ptr,
    y_ptr,
    out_ptr,
    n_rows,
    T,
    S,
    d,
    sx_b,
    sx_t,
    sx_s,
    sx_d,
    sg_b,
    sg_t,
    sg_s,
    sg_d,
    sy_b,
    sy_t,
    sy_s,
    sy_d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]
    x_off = _row_offsets(rows, T, S, sx_b, sx_t, sx_s)[:, None] + cols[None, :] * sx_d
    g_off = _row_offsets(rows, T, S, sg_b, sg_t, sg_s)[:, None] + cols[None, :] * sg_d
    y_off = _row_offsets(rows, T, S, sy_b, sy_t, sy_s)[:, None] + cols[None, :] * sy_d
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + y_off, mask=mask, other=0.0).to(tl.float32)
    out = x + gate * y
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _as_4d(x: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x viewed as (B, T, S, d) (leading 1s added) and `others` broadcast to it (stride 0 where broadcast).
    Raises ValueError unless the kernels can take these shapes and dtypes."""
    if not 1 <= x.dim() <= 4:
        raise ValueError(f"x must have 1 to 4 dims, (B, T, S, d); got {tuple(x.shape)}")
    if x.shape[-1] > MAX_D:
        raise ValueError(f"d = {x.shape[-1]} is above the kernel's {MAX_D}")
    for t in (x, *others):
        if t.dtype not in _DTYPES:
            raise ValueError(f"dtype {t.dtype} is not one of {_DTYPES}")
        if t.device != x.device:
            raise ValueError("all operands must be on one device")
    try:
        wide = [torch.broadcast_to(t, x.shape) for t in others]
    except RuntimeError as exc:
        raise ValueError(f"operands do not broadcast to x {tuple(x.shape)}: {exc}") from exc
    lead = (None,) * (4 - x.dim())
    return tuple(t[lead] for t in (x, *wide))


def _launch_shape(x4: torch.Tensor) -> tuple[int, int, int]:
    """(rows, BLOCK_M, BLOCK_D) for x viewed as (B, T, S, d)."""
    block_d = triton.next_power_of_2(x4.shape[-1])
    block_m = max(1, min(128, TILE_ELEMENTS // block_d))
    return x4.shape[0] * x4.shape[1] * x4.shape[2], block_m, block_d


def _warps(block_m: int, block_d: int) -> int:
    return 8 if block_m * block_d >= 4096 else 4


def _launch(kernel, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *scalars: float) -> torch.Tensor:
    """Runs a row kernel over x with two operands broadcast to it (x, a, b, out, shape, scalars, strides)."""
    x4, a4, b4 = _as_4d(x, a, b)
    dtype = torch.promote_types(torch.promote_types(x.dtype, a.dtype), b.dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n_rows, block_m, block_d = _launch_shape(x4)
    if out.numel() == 0:
        return out
    kernel[(triton.cdiv(n_rows, block_m),)](
        x4,
        a4,
        b4,
        out,
        n_rows,
        x4.shape[1],
        x4.shape[2],
        x4.shape[3],
        *scalars,
        *x4.stride(),
        *a4.stride(),
        *b4.stride(),
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=_warps(block_m, block_d),
    )
    return out


def layernorm_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """One-pass LN(x) * (1 + scale) + shift; shift and scale broadcast to x (B, T, S, d).

    Returns a contiguous tensor of x's shape in the reference's dtype (torch's promotion of the three).
    Runs on CUDA tensors, or on CPU ones under TRITON_INTERPRET=1. No autograd."""
    return _launch(_layernorm_modulate_kernel, x, shift, scale, float(eps))


def gated_residual_triton(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-pass x + gate * y; gate and y broadcast to x (B, T, S, d), y may be any strided view.

    Returns a contiguous tensor of x's shape in the reference's dtype. No autograd."""
    return _launch(_gated_residual_kernel, x, gate, y)


def _triton_ok(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """CUDA operands the kernels take, of x's shape once broadcast, and no autograd needed."""
    tensors = (x, *others)
    if not dispatch.enabled():
        return False
    if not all(dispatch.on_device(t) and t.dtype in _DTYPES for t in tensors):
        return False
    if not 1 <= x.dim() <= 4 or x.shape[-1] > MAX_D:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    try:
        return torch.broadcast_shapes(*(t.shape for t in tensors)) == x.shape
    except RuntimeError:
        return False


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift: the Triton kernel on CUDA (no autograd), else the reference."""
    if _triton_ok(x, shift, scale):
        return layernorm_modulate_triton(x, shift, scale, eps)
    return layernorm_modulate_reference(x, shift, scale, eps)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y: the Triton kernel on CUDA (no autograd), else the reference."""
    if _triton_ok(x, gate, y):
        return gated_residual_triton(x, gate, y)
    return gated_residual_reference(x, gate, y)
