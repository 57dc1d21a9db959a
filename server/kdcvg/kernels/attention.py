"""Self-attention forward of the DiT: a Triton flash-attention kernel and its PyTorch reference.

Both compute, for q, k, v of shape (B, H, N, D) (non-causal, no mask):

    q, k <- RMSNorm(q; q_norm_weight), RMSNorm(k; k_norm_weight)     (optional, per head, over D)
    q, k <- RoPE(q), RoPE(k)                                          (optional, positions 0..N-1)
    out  =  softmax(q k^T / sqrt(D)) v

which is what `kdcvg.models.stdit.SelfAttention` does between its q/k/v projections and `proj`. RoPE
rotates interleaved pairs (x[..., 0::2], x[..., 1::2]) by angle pos * inv_freq, as stdit's
`RotaryEmbedding` does.

The Triton kernel (`attention_triton`) is flash-attention style: each program owns a tile of query rows,
streams K/V in blocks with an online softmax, and accumulates in fp32. The RMSNorm/RoPE prologue is fused:
the q tile is normalised and rotated once when it is loaded, and each K block as it is loaded, so the
normalised/rotated q and k never go to memory. RoPE uses cos/sin tables of shape (N, D/2) built on the
host by `rope_tables` (the same fp32 values the reference uses); in the kernel a row is split into its even
and odd halves with a reshape to (rows, D/2, 2), rotated, and joined back.

Two regimes pick the tiling (`attention_config`):

- long sequences (spatial attention, N in the thousands): one program per (head, BLOCK_M query rows),
  K/V streamed in BLOCK_N blocks;
- short sequences (temporal attention, N = frames <= 32, with B*H = every spatial position x heads, up to
  ~1e5): a 16-row tile per sequence would leave most of a tensor-core tile and of each program idle, so
  several whole sequences (`seqs_per_block` of them) are packed into one 64-row tile and the scores are
  masked to the block diagonal. One program then handles several heads in a single K/V step.

The grid is one-dimensional (query blocks fastest, so the programs of one head run together and share its
K/V in L2), which also keeps B*H ~ 1e5 clear of CUDA's 65535 limit on the grid's second axis.
"""

# Arguments of @triton.jit functions stay unannotated: Triton reads annotations as specialisation hints.
# ruff: noqa: ANN001

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton import knobs

from kdcvg.kernels import dispatch

__all__ = [
    "AttentionConfig",
    "attention",
    "attention_config",
    "attention_reference",
    "attention_triton",
    "rope_tables",
]

# Whether the kernel below was built for the Triton interpreter (TRITON_INTERPRET=1 when this module was
# imported): then it also runs on CPU tensors.
INTERPRETED: bool = bool(knobs.runtime.interpret)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 128


@dataclass(frozen=True)
class AttentionConfig:
    """Tiling of one launch. All sizes are powers of two.

    block_m / block_n: rows of the query tile / of each K/V block (>= 16, tensor-core tiles).
    seqs_per_block: whole (batch, head) sequences packed into one tile; each takes block_m / seqs_per_block
    query rows and block_n / seqs_per_block key rows of it. 1 for long sequences.
    """

    block_m: int
    block_n: int
    seqs_per_block: int = 1
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "seqs_per_block"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.block_m < 16 or self.block_n < 16:
            raise ValueError(f"block_m and block_n must be >= 16, got {self.block_m}, {self.block_n}")
        if self.seqs_per_block > min(self.block_m, self.block_n):
            raise ValueError(f"seqs_per_block {self.seqs_per_block} exceeds the tile ({self.block_m}x{self.block_n})")


# The longest N whose sequences are packed several to a tile.
_PACKED_MAX_N = 32


def attention_config(n: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> AttentionConfig:
    """Block sizes for sequence length `n` and head dim `head_dim`: heuristics sized for Hopper (H100/H200),
    not autotuned.

    N <= 32 (temporal): 64-row tiles holding 64 / next_pow2(N) whole sequences, one K/V step.
    N <= 1024: 64 x 64 tiles. Longer (spatial): 128 query rows x 64 key rows, 8 warps at padded D = 128.
    fp32 (exact fp32 products, no tensor cores; a checking path) uses 32 x 32 tiles throughout.
    """
    n_pad = triton.next_power_of_2(max(n, 1))
    d_pad = triton.next_power_of_2(head_dim)
    if dtype == torch.float32:
        return AttentionConfig(32, 32, max(1, 32 // n_pad), num_warps=4, num_stages=1)
    if n_pad <= _PACKED_MAX_N:
        return AttentionConfig(64, 64, 64 // n_pad, num_warps=4, num_stages=1)
    if n <= 1024:
        return AttentionConfig(64, 64, 1, num_warps=4, num_stages=2)
    return AttentionConfig(128, 64, 1, num_warps=8 if d_pad >= 128 else 4, num_stages=3)


def _fit_device(cfg: AttentionConfig, device: torch.device) -> AttentionConfig:
    # Three stages of K/V plus the prologue's layout conversions take up to 192 KiB of shared memory at
    # padded D = 128: fine on Hopper (227 KiB), too much on A100 (163 KiB) or Ada (99 KiB).
    if device.type != "cuda" or cfg.num_stages <= 2:
        return cfg
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)
    return cfg if limit >= 200 * 1024 else replace(cfg, num_stages=2)


def rope_tables(n: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pos * inv_freq for pos = 0..n-1: two fp32 tensors (n, len(inv_freq))."""
    pos = torch.arange(n, dtype=torch.float32, device=inv_freq.device)
    ang = pos[:, None] * inv_freq.to(torch.float32)[None]
    return torch.cos(ang), torch.sin(ang)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    rope_inv_freq: torch.Tensor | None,
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    d = q.shape[-1]
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is None:
            continue
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (d,):
            raise ValueError(f"{name} must be a tensor of shape ({d},), got {getattr(w, 'shape', w)}")
        if w.device != q.device:
            raise ValueError(f"{name} is on {w.device}, q on {q.device}")
    if rope_inv_freq is not None:
        if d % 2:
            raise ValueError(f"RoPE needs an even head dim, got {d}")
        if not isinstance(rope_inv_freq, torch.Tensor) or tuple(rope_inv_freq.shape) != (d // 2,):
            raise ValueError(f"rope_inv_freq must be a tensor of shape ({d // 2},), got {rope_inv_freq!r}")
        if rope_inv_freq.device != q.device:
            raise ValueError(f"rope_inv_freq is on {rope_inv_freq.device}, q on {q.device}")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    rope_inv_freq: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch attention with the optional RMSNorm/RoPE prologue, computed in fp32; returns q's dtype.

    q, k, v: (B, H, N, D). q_norm_weight / k_norm_weight: (D,) RMSNorm weights applied per head to q / k.
    rope_inv_freq: (D/2,) RoPE frequencies, applied to q and k after the norm at positions 0..N-1.
    """
    _check_inputs(q, k, v, q_norm_weight, k_norm_weight, rope_inv_freq)
    d = q.shape[-1]
    qf, kf, vf = q.float(), k.float(), v.float()
    if q_norm_weight is not None:
        qf = F.rms_norm(qf, (d,), q_norm_weight.float(), eps)
    if k_norm_weight is not None:
        kf = F.rms_norm(kf, (d,), k_norm_weight.float(), eps)
    if rope_inv_freq is not None:
        cos, sin = rope_tables(q.shape[-2], rope_inv_freq)
        qf, kf = _rope(qf, cos, sin), _rope(kf, cos, sin)
    # SDPA is softmax(q k^T / sqrt(D)) v without materialising the N x N scores on large inputs.
    return F.scaled_dot_product_attention(qf, kf, vf).to(q.dtype)


@triton.jit
def _prologue(
    x,
    w,
    cos_ptr,
    sin_ptr,
    pos,
    row_ok,
    eps,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_ROPE: tl.constexpr,
):
    """RMSNorm (weight w) then RoPE at positions `pos` of an fp32 tile x (rows, BLOCK_D)."""
    if HAS_NORM:
        # Padded columns are zero, so summing over BLOCK_D and dividing by HEAD_DIM is the mean over D.
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
        x = x * rstd[:, None] * w[None, :]
    if HAS_ROPE:
        HALF: tl.constexpr = HEAD_DIM // 2
        offs_h = tl.arange(0, BLOCK_D // 2)
        t_off = pos[:, None] * HALF + offs_h[None, :]
        t_mask = row_ok[:, None] & (offs_h < HALF)[None, :]
        c = tl.load(cos_ptr + t_off, mask=t_mask, other=1.0)
        s = tl.load(sin_ptr + t_off, mask=t_mask, other=0.0)
        x1, x2 = tl.split(tl.reshape(x, (x.shape[0], BLOCK_D // 2, 2)))
        x = tl.reshape(tl.join(x1 * c - x2 * s, x1 * s + x2 * c), (x.shape[0], BLOCK_D))
    return x


@triton.jit
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    qw_ptr,
    kw_ptr,
    cos_ptr,
    sin_ptr,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sob,
    soh,
    son,
    sod,
    H,
    BH,
    N,
    eps,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEQS: tl.constexpr,
    HAS_QNORM: tl.constexpr,
    HAS_KNORM: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    # Each tile holds SEQS (batch, head) sequences: ROWS query rows / COLS key rows of each.
    ROWS: tl.constexpr = BLOCK_M // SEQS
    COLS: tl.constexpr = BLOCK_N // SEQS
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, ROWS)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    dtype = v_ptr.dtype.element_ty

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    r = tl.arange(0, BLOCK_M)
    q_seq = r // ROWS
    q_bh = pid_bh * SEQS + q_seq
    q_pos = pid_m * ROWS + r % ROWS
    q_ok = (q_pos < N) & (q_bh < BH)
    q_b = (q_bh // H).to(tl.int64)
    q_h = (q_bh % H).to(tl.int64)
    q_pos64 = q_pos.to(tl.int64)
    # Row offsets are multiples of ROW_ALIGN elements (checked on the host); saying so lets the compiler
    # vectorise the loads along D even when a stride (D = 72) is not a multiple of 16.
    q_row = tl.multiple_of(q_b * sqb + q_h * sqh + q_pos64 * sqn, ROW_ALIGN)
    q_ptrs = q_ptr + q_row[:, None] + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=q_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    if HAS_QNORM:
        qw = tl.load(qw_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    else:
        qw = offs_d
    q = _prologue(q, qw, cos_ptr, sin_ptr, q_pos, q_ok, eps, HEAD_DIM, BLOCK_D, HAS_QNORM, HAS_ROPE)
    q = q.to(dtype)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    c = tl.arange(0, BLOCK_N)
    k_seq = c // COLS
    k_bh = pid_bh * SEQS + k_seq
    k_bh_ok = k_bh < BH
    k_b = (k_bh // H).to(tl.int64)
    k_h = (k_bh % H).to(tl.int64)
    k_row0 = k_b * skb + k_h * skh
    v_row0 = k_b * svb + k_h * svh
    if HAS_KNORM:
        kw = tl.load(kw_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    else:
        kw = offs_d
    same_seq = q_seq[:, None] == k_seq[None, :]

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start_n in range(0, N, COLS):
        k_pos = start_n + c % COLS
        k_ok = (k_pos < N) & k_bh_ok
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k_pos64 = k_pos.to(tl.int64)
        k_row = tl.multiple_of(k_row0 + k_pos64 * skn, ROW_ALIGN)
        k = tl.load(k_ptr + k_row[:, None] + offs_d[None, :] * skd, mask=kv_mask, other=0.0).to(tl.float32)
        k = _prologue(k, kw, cos_ptr, sin_ptr, k_pos, k_ok, eps, HEAD_DIM, BLOCK_D, HAS_KNORM, HAS_ROPE)
        k = k.to(dtype)
        if UPCAST_DOT:
            k = k.to(tl.float32)
        # Scores in the log2 domain (qk_scale = log2(e) / sqrt(D)) so the softmax can use exp2.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        valid = (k_pos < N)[None, :]
        if SEQS > 1:
            valid = valid & same_seq
        s = tl.where(valid, s, float("-inf"))
        # Every row sees at least key 0 of its own sequence in the first step, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_row = tl.multiple_of(v_row0 + k_pos64 * svn, ROW_ALIGN)
        v = tl.load(v_ptr + v_row[:, None] + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        p = p.to(dtype)
        if UPCAST_DOT:
            p, v = p.to(tl.float32), v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    o_row = tl.multiple_of(q_b * sob + q_h * soh + q_pos64 * son, ROW_ALIGN)
    o_ptrs = o_ptr + o_row[:, None] + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


def _row_align(*tensors: torch.Tensor) -> int:
    """Largest power of two (<= 16) dividing every (B, H, N) stride of the tensors; size-1 dims don't count."""
    g = 0
    for t in tensors:
        for size, stride in zip(t.shape[:3], t.stride()[:3], strict=True):
            if size > 1:
                g = math.gcd(g, stride)
    align = 1
    while align < 16 and g % (2 * align) == 0:
        align *= 2
    return align


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    rope_inv_freq: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Triton flash attention with the fused RMSNorm/RoPE prologue; same arguments and result as
    `attention_reference`.

    q, k, v may be arbitrary strided views (e.g. (B, N, H, D) tensors transposed to (B, H, N, D)); they are
    read in place. The output has q's dtype and, when q is dense, q's memory layout (`torch.empty_like`),
    so transposing it back to (B, N, H, D) and reshaping is free. Inputs must be on CUDA, or on any device
    when the module was imported under TRITON_INTERPRET=1. Head dims: even, 16..128 (non-powers of two such
    as 72 are padded to the next power of two in the kernel). `config` overrides `attention_config`.
    """
    _check_inputs(q, k, v, q_norm_weight, k_norm_weight, rope_inv_freq)
    if not (q.is_cuda or INTERPRETED):
        raise ValueError(f"attention_triton needs CUDA tensors (or TRITON_INTERPRET=1), got device {q.device}")
    b, h, n, d = q.shape
    if d % 2 or not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {d} is not supported: it must be even and in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    cfg = config if config is not None else _fit_device(attention_config(n, d, q.dtype), q.device)
    if rope_inv_freq is not None:
        cos, sin = rope_tables(n, rope_inv_freq)
    else:
        cos = sin = q  # not read
    bh = b * h
    # The interpreter's tl.dot multiplies bf16 operands as their raw uint16 bits (Triton 3.9), so there the
    # operands are rounded to bf16 and multiplied in fp32: the same products, accumulated in fp32, as on GPU.
    upcast = INTERPRETED and q.dtype == torch.bfloat16
    grid = (triton.cdiv(n, cfg.block_m // cfg.seqs_per_block) * triton.cdiv(bh, cfg.seqs_per_block),)
    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        q_norm_weight if q_norm_weight is not None else q,
        k_norm_weight if k_norm_weight is not None else q,
        cos,
        sin,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        h,
        bh,
        n,
        float(eps),
        math.log2(math.e) / math.sqrt(d),
        HEAD_DIM=d,
        BLOCK_D=triton.next_power_of_2(d),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        SEQS=cfg.seqs_per_block,
        HAS_QNORM=q_norm_weight is not None,
        HAS_KNORM=k_norm_weight is not None,
        HAS_ROPE=rope_inv_freq is not None,
        # fp32 inputs get true fp32 products (the default would round them to tf32).
        DOT_PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32",
        UPCAST_DOT=upcast,
        ROW_ALIGN=_row_align(q, k, v, out),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def triton_ok(*tensors: torch.Tensor) -> bool:
    """The Triton path applies: CUDA half-precision tensors, kernels switched on, no autograd needed (the
    kernel has no backward; LoRA distillation differentiates through attention)."""
    half = (torch.float16, torch.bfloat16)
    if not dispatch.enabled() or not all(dispatch.on_device(t) and t.dtype in half for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    use_triton: bool | None = None,
    **kw: object,
) -> torch.Tensor:
    """`attention_triton` on CUDA, `attention_reference` elsewhere; keyword arguments go to either.

    use_triton forces the choice (True on CPU needs TRITON_INTERPRET=1, as in the tests).
    """
    if use_triton is None:
        use_triton = triton_ok(q, k, v)
    return attention_triton(q, k, v, **kw) if use_triton else attention_reference(q, k, v, **kw)
