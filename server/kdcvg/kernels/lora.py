"""Multi-LoRA projection update in Triton (the SGMV pattern of Punica / vLLM), beside its PyTorch reference.

`lora_delta_triton` computes the same thing as `kdcvg.priors.lora.lora_delta_reference`:
out[i] = scale[i] * x[i] @ a[index[i]].T @ b[index[i]].T, zero for rows with index -1.

Grouping (SGMV). `LoRALinear` passes one row per attention sequence: (B*T, S) tokens in spatial blocks and
(B*S, T) in temporal ones, each row with its sample's slot. The host builds a segment table on the device,
without a synchronisation: the row ids sorted (stably) by slot, so every slot's rows form one segment, with
the rows of no LoRA (index -1) as segment 0. A segment's tokens are numbered consecutively across its rows
and cut into tiles of BLOCK_M tokens; a tile may span several rows (temporal blocks have only T tokens per
row), the kernels address each token through its row id. The launch grid is an upper bound on the number of
tiles, cdiv(N*n, BLOCK_M) + S + 1, so it needs no tile count from the device; a program past the last tile
(or of an empty segment) finds every token masked off. Tiles of one segment are adjacent in launch order,
so they share that slot's A and B in L2.

Two kernels, as Punica does:
- shrink: one program per tile: x_tile (BLOCK_M, d_in) @ A[slot]^T over d_in in BLOCK_K chunks, fp32
  accumulation, into an fp32 intermediate (N*n, BLOCK_R) at each token's own position. Rows of no LoRA are
  skipped (their programs return at once).
- expand: one program per (tile, BLOCK_N output columns), the column blocks of one tile adjacent so the
  tile's intermediate is read from L2: intermediate (rounded to x's dtype, as the reference rounds it) @
  B[slot]^T over the rank in BLOCK_RK chunks (none on the padding), times the row's scale, written in x's
  dtype. Programs of segment 0 write zeros, so the output needs no separate zero fill.
A single fused kernel would either recompute the shrink for every output block or hold all d_out columns
of a tile in one program; the intermediate is only rank floats per token, so the split costs little.

Tiles (`tile_config`): 64 tokens x 32 d_in (shrink) and 64 tokens x 128 outputs, rank chunks of 32
(expand) for bf16/fp16; 32 x 32 and 32 x 64 for fp32; 4 warps. The shrink's rank axis (and the
intermediate's columns) is padded to BLOCK_R = max(16, next power of two of r), masked (tl.dot needs 16).
A and B are cast to x's dtype on load (the stacks may be kept in fp32). bf16/fp16 inputs use tensor-core
dots with fp32 accumulation; fp32 inputs use IEEE fp32 dots (no TF32), like torch's default matmul.
Under the Triton interpreter (CPU tensors, TRITON_INTERPRET=1) every dot runs in fp32 on operands already
rounded to x's dtype, which is what the tensor-core path computes (the interpreter's own bf16 dot is wrong;
its fp32 -> bf16 casts also truncate where the GPU rounds to nearest, so bf16 errors there are ~2x larger).

Slots outside [0, S) other than -1 are treated as no LoRA (zeros); the reference would raise instead.
The Triton path has no backward: `lora_delta` (the dispatch that `install` makes the model's kernel) uses
the reference whenever autograd needs the result, as in a LoRA distillation.
"""

# Triton kernel arguments stay unannotated: Triton reads annotations as specialisation hints.
# ruff: noqa: ANN001

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kdcvg.kernels import dispatch
from kdcvg.priors.lora import lora_delta_reference, set_lora_kernel

__all__ = ["TileConfig", "install", "lora_delta", "lora_delta_reference", "lora_delta_triton", "tile_config"]

MAX_RANK = 128


@dataclass(frozen=True)
class TileConfig:
    """Tiles of the two kernels (shared BLOCK_M: one segment table serves both launches)."""

    block_m: int  # tokens per tile
    block_k: int  # d_in chunk of the shrink
    block_n: int  # output columns per expand program
    block_rk: int  # rank chunk of the expand
    num_warps: int = 4


# Chosen for sm_90 from ptxas reports (no register spills at rank 128, at most ~176 registers a thread):
# tensor-core dots for bf16/fp16, smaller tiles for the register-hungry fp32 FMA dots.
TENSOR_CORE_TILES = TileConfig(block_m=64, block_k=32, block_n=128, block_rk=32)
FP32_TILES = TileConfig(block_m=32, block_k=32, block_n=64, block_rk=32)


def tile_config(dtype: torch.dtype) -> TileConfig:
    """The tiles for x of this dtype (the interpreter uses the same, to test the GPU's tiling)."""
    return FP32_TILES if dtype == torch.float32 else TENSOR_CORE_TILES


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _tile_tokens(pid, seg, tile0_ptr, row0_ptr, rows_ptr, order_ptr, n_tok, BLOCK_M: tl.constexpr):
    """The tile's token rows (int64 row ids, token positions in the row) and their validity mask."""
    local = pid - tl.load(tile0_ptr + seg)
    row0 = tl.load(row0_ptr + seg)
    seg_tokens = tl.load(rows_ptr + seg) * n_tok
    p = local * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = p < seg_tokens
    row = tl.load(order_ptr + row0 + p // n_tok, mask=valid, other=0).to(tl.int64)
    tok = (p % n_tok).to(tl.int64)
    return row, tok, valid


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    inter_ptr,
    order_ptr,
    tile_seg_ptr,
    tile0_ptr,
    row0_ptr,
    rows_ptr,
    n_tok,
    d_in,
    rank,
    stride_xr,
    stride_xt,
    stride_xk,
    stride_as,
    stride_ar,
    stride_ak,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    seg = tl.load(tile_seg_ptr + pid)
    if seg == 0:  # rows of no LoRA, or past the last tile
        return
    row, tok, valid = _tile_tokens(pid, seg, tile0_ptr, row0_ptr, rows_ptr, order_ptr, n_tok, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    x_rows = x_ptr + row * stride_xr + tok * stride_xt
    a_cols = a_ptr + (seg - 1).to(tl.int64) * stride_as + r * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < d_in
        xt = tl.load(x_rows[:, None] + k[None, :] * stride_xk, mask=valid[:, None] & k_ok[None, :], other=0.0)
        at = tl.load(a_cols[None, :] + k[:, None] * stride_ak, mask=k_ok[:, None] & (r < rank)[None, :], other=0.0)
        at = at.to(x_ptr.dtype.element_ty)
        if DOT_FP32:
            acc += tl.dot(xt.to(tl.float32), at.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(xt, at, acc)
    pos = row * n_tok + tok
    tl.store(inter_ptr + pos[:, None] * BLOCK_R + r[None, :], acc, mask=valid[:, None])


@triton.jit
def _lora_expand_kernel(
    inter_ptr,
    b_ptr,
    scale_ptr,
    out_ptr,
    order_ptr,
    tile_seg_ptr,
    tile0_ptr,
    row0_ptr,
    rows_ptr,
    n_tok,
    d_out,
    rank,
    n_col_blocks,
    stride_bs,
    stride_bo,
    stride_br,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_RK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    tile = pid // n_col_blocks
    col_block = pid % n_col_blocks
    seg = tl.load(tile_seg_ptr + tile)
    row, tok, valid = _tile_tokens(tile, seg, tile0_ptr, row0_ptr, rows_ptr, order_ptr, n_tok, BLOCK_M)
    o = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < d_out
    pos = row * n_tok + tok
    out_ptrs = out_ptr + pos[:, None] * d_out + o[None, :]
    out_mask = valid[:, None] & o_ok[None, :]
    if seg == 0:  # rows of no LoRA get zeros (tiles past the last one have every token masked off)
        tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=out_ptr.dtype.element_ty), mask=out_mask)
        return
    h_rows = inter_ptr + pos * BLOCK_R
    b_rows = b_ptr + (seg - 1).to(tl.int64) * stride_bs + o * stride_bo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_RK):  # rank chunks: bounded registers, no work on the padding
        r = r0 + tl.arange(0, BLOCK_RK)
        r_ok = r < rank
        h = tl.load(h_rows[:, None] + r[None, :], mask=valid[:, None] & r_ok[None, :], other=0.0)
        h = h.to(out_ptr.dtype.element_ty)
        bt = tl.load(b_rows[None, :] + r[:, None] * stride_br, mask=r_ok[:, None] & o_ok[None, :], other=0.0)
        bt = bt.to(out_ptr.dtype.element_ty)
        if DOT_FP32:
            acc += tl.dot(h.to(tl.float32), bt.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(h, bt, acc)
    s = tl.load(scale_ptr + row, mask=valid, other=0.0)
    acc = acc * s[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _segment_table(
    index: torch.Tensor, num_slots: int, n_tok: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The SGMV segment table, built with device ops only (no host synchronisation).

    Segment 0 holds the rows of no LoRA, segment s + 1 those of slot s. Returns (order: row ids sorted by
    segment, tile_seg: each launched tile's segment (0 past the last tile), tile0: each segment's first
    tile, row0: each segment's first entry in order, rows: each segment's row count, tiles launched)."""
    device = index.device
    seg = torch.where((index >= 0) & (index < num_slots), index.long() + 1, 0)
    order = torch.argsort(seg, stable=True).to(torch.int32)
    rows = torch.zeros(num_slots + 1, dtype=torch.int64, device=device).scatter_add_(0, seg, torch.ones_like(seg))
    row0 = torch.cumsum(rows, 0) - rows
    tiles = (rows * n_tok + block_m - 1) // block_m
    tile_end = torch.cumsum(tiles, 0)
    # sum over segments of cdiv(rows * n, BLOCK_M) <= cdiv(N * n, BLOCK_M) + number of segments
    launched = triton.cdiv(index.shape[0] * n_tok, block_m) + num_slots + 1
    tile_seg = torch.searchsorted(tile_end, torch.arange(launched, device=device), right=True)
    tile_seg = torch.where(tile_seg > num_slots, 0, tile_seg)  # past the end: masked off in segment 0
    as32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    return order, as32(tile_seg), as32(tile_end - tiles), as32(row0), as32(rows), launched


def _check(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> None:
    if x.dim() != 3 or a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"x, a, b must be 3-D; got {tuple(x.shape)}, {tuple(a.shape)}, {tuple(b.shape)}")
    n_rows, _, d_in = x.shape
    slots, rank, a_in = a.shape
    if a_in != d_in or b.shape[0] != slots or b.shape[2] != rank:
        raise ValueError(f"LoRA stacks A {tuple(a.shape)} and B {tuple(b.shape)} do not fit x {tuple(x.shape)}")
    if index.shape != (n_rows,) or scale.shape != (n_rows,):
        raise ValueError(f"index {tuple(index.shape)} and scale {tuple(scale.shape)} must be ({n_rows},)")
    if rank > MAX_RANK:
        raise ValueError(f"rank {rank} is above the kernel's {MAX_RANK}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; the kernel takes {_DTYPES}")
    if a.device != x.device or b.device != x.device:
        raise ValueError(f"the LoRA stacks are on {a.device} / {b.device}, x on {x.device}")


def lora_delta_triton(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Per-row multi-LoRA update with the SGMV kernels: the contract of `lora_delta_reference`.

    x (N, n, d_in) any strides; a (S, r, d_in); b (S, d_out, r) (any float dtype, cast to x's); index (N,)
    integer, -1 for no LoRA; scale (N,) (index and scale may be on the host). Returns a contiguous
    (N, n, d_out) tensor in x's dtype, rows of no LoRA zero. Runs on CUDA tensors, or on CPU ones under
    TRITON_INTERPRET=1. No autograd."""
    _check(x, a, b, index, scale)
    index, scale = index.to(x.device), scale.to(x.device)  # a no-op unless they come from the host
    n_rows, n_tok, d_in = x.shape
    slots, rank, _ = a.shape
    d_out = b.shape[1]
    out = torch.empty(n_rows, n_tok, d_out, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if slots == 0:
        return out.zero_()
    cfg = tile_config(x.dtype)
    block_r = max(16, triton.next_power_of_2(rank))
    dot_fp32 = x.dtype == torch.float32 or x.device.type != "cuda"
    order, tile_seg, tile0, row0, rows, launched = _segment_table(index, slots, n_tok, cfg.block_m)
    table = (order, tile_seg, tile0, row0, rows)
    # the reference multiplies by the scale rounded to x's dtype
    row_scale = scale.to(x.dtype).to(torch.float32).contiguous()
    inter = torch.empty(n_rows * n_tok, block_r, dtype=torch.float32, device=x.device)
    _lora_shrink_kernel[(launched,)](
        x,
        a,
        inter,
        *table,
        n_tok,
        d_in,
        rank,
        *x.stride(),
        *a.stride(),
        BLOCK_M=cfg.block_m,
        BLOCK_K=cfg.block_k,
        BLOCK_R=block_r,
        DOT_FP32=dot_fp32,
        num_warps=cfg.num_warps,
    )
    n_col_blocks = triton.cdiv(d_out, cfg.block_n)
    _lora_expand_kernel[(launched * n_col_blocks,)](
        inter,
        b,
        row_scale,
        out,
        *table,
        n_tok,
        d_out,
        rank,
        n_col_blocks,
        *b.stride(),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_R=block_r,
        BLOCK_RK=min(cfg.block_rk, block_r),
        DOT_FP32=dot_fp32,
        num_warps=cfg.num_warps,
    )
    return out


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def lora_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The update on the fastest path: the Triton kernels for CUDA tensors (when autograd does not need
    the result and the rank fits), else `lora_delta_reference`."""
    usable = dispatch.on_device(x) and a.shape[1] <= MAX_RANK and x.dtype in _DTYPES
    if usable and dispatch.enabled() and not _needs_grad(x, a, b, scale):
        return lora_delta_triton(x, a, b, index, scale)
    return lora_delta_reference(x, a, b, index, scale)


def install() -> None:
    """Makes `lora_delta` the update of every `LoRALinear` (call once at server start on CUDA)."""
    set_lora_kernel(lora_delta)
