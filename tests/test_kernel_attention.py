"""The Triton attention kernel against its PyTorch reference, and the reference against stdit's SelfAttention.

Without CUDA the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set below before Triton is
imported), so the CPU shapes are tiny; the full-size cases at the end need a GPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from kdcvg.kernels import attention as attn_mod  # noqa: E402
from kdcvg.kernels.attention import AttentionConfig, attention_config  # noqa: E402
from kdcvg.models.stdit import SelfAttention  # noqa: E402

# Triton builds its own library functions (tl.cdiv, tl.sum, ...) for the interpreter or the GPU when it is
# first imported. If something imported it before TRITON_INTERPRET=1 was set, no kernel can run on this
# CPU-only process: say so instead of failing inside the interpreter.
needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() or isinstance(tl.standard.cdiv, InterpretedFunction)),
    reason="no CUDA, and Triton was imported before TRITON_INTERPRET=1 was set (set it in the environment)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Max |triton - reference| allowed, the reference being computed in fp32. Measured on the CPU matrix below:
# fp32 1.7e-6, fp16 2.0e-3, bf16 3.1e-2 (q, k and the softmax weights are rounded to bf16 for the dots,
# as in any flash attention; PyTorch's own bf16 path is off by 1.6e-2 on the same inputs).
ATOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEAD_DIMS = [64, 72, 128]
PROLOGUES = ["none", "norm", "rope", "norm+rope"]


def inv_freq(d: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32, device=DEVICE) / d)


def make_qkv(b: int, h: int, n: int, d: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, device=DEVICE).to(dtype) for _ in range(3))


def prologue_kwargs(kind: str, d: int, seed: int = 1) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    kw: dict = {}
    if "norm" in kind:
        kw["q_norm_weight"] = (0.5 + torch.rand(d, generator=g)).to(DEVICE)
        kw["k_norm_weight"] = (0.5 + torch.rand(d, generator=g)).to(DEVICE)
    if "rope" in kind:
        kw["rope_inv_freq"] = inv_freq(d)
    return kw


def check(q, k, v, config: AttentionConfig | None = None, **kw) -> float:
    out = attn_mod.attention_triton(q, k, v, config=config, **kw)
    ref = attn_mod.attention_reference(q, k, v, **kw)
    assert out.shape == ref.shape and out.dtype == q.dtype
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= ATOL[q.dtype], f"max error {err} > {ATOL[q.dtype]}"
    return err


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", [5, 17, 33])
@pytest.mark.parametrize("prologue", PROLOGUES)
def test_matches_reference(dtype, d, n, prologue):
    q, k, v = make_qkv(1, 2, n, d, dtype)
    check(q, k, v, **prologue_kwargs(prologue, d))


# Small tiles so that N = 40 takes several query blocks and several K/V steps of the online softmax, and
# packed tiles (several sequences per tile) with more than one step.
@needs_kernel
@pytest.mark.parametrize(
    "config",
    [AttentionConfig(16, 16), AttentionConfig(32, 16), AttentionConfig(16, 32), AttentionConfig(16, 16, 4)],
    ids=["16x16", "32x16", "16x32", "16x16-packed4"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multiple_blocks(config, dtype):
    q, k, v = make_qkv(2, 3, 40, 72, dtype)
    check(q, k, v, config, **prologue_kwargs("norm+rope", 72))


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_temporal_shape(dtype, d):
    # B*H = 21 sequences of 8 frames: 8 sequences per packed tile (4 in fp32), the last tile partly empty.
    assert attention_config(8, d, dtype).seqs_per_block == (4 if dtype == torch.float32 else 8)
    q, k, v = make_qkv(7, 3, 8, d, dtype)
    check(q, k, v, **prologue_kwargs("norm+rope", d))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_inputs(dtype):
    b, n, h, d = 2, 17, 3, 72
    g = torch.Generator(device="cpu").manual_seed(3)
    # q: a (B, N, H, D) tensor viewed as (B, H, N, D), as stdit produces it; k and v: slices of one fused
    # (B, N, 2, H, D) tensor; the reference sees contiguous copies.
    q = torch.randn(b, n, h, d, generator=g).to(DEVICE, dtype).transpose(1, 2)
    kv = torch.randn(b, n, 2, h, d, generator=g).to(DEVICE, dtype)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    kw = prologue_kwargs("norm+rope", d)
    out = attn_mod.attention_triton(q, k, v, **kw)
    ref = attn_mod.attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), **kw)
    assert (out.float() - ref.float()).abs().max().item() <= ATOL[dtype]
    # The output keeps q's layout, so stdit's out.transpose(1, 2).reshape(b, n, h * d) needs no copy.
    assert out.stride() == q.stride()
    assert out.transpose(1, 2).is_contiguous()


@needs_kernel
def test_single_token_and_empty_batch():
    q, k, v = make_qkv(2, 2, 1, 64, torch.float32)
    check(q, k, v, **prologue_kwargs("norm+rope", 64))
    empty = torch.empty(0, 2, 5, 64, device=DEVICE)
    assert attn_mod.attention_triton(empty, empty, empty).shape == (0, 2, 5, 64)


@needs_kernel
def test_dispatch():
    q, k, v = make_qkv(1, 2, 9, 64, torch.float32)
    kw = prologue_kwargs("norm+rope", 64)
    ref = attn_mod.attention_reference(q, k, v, **kw)
    out = attn_mod.attention(q, k, v, **kw)
    if q.is_cuda:
        assert (out - ref).abs().max().item() <= ATOL[torch.float32]
    else:
        assert torch.equal(out, ref)
    forced = attn_mod.attention(q, k, v, use_triton=True, **kw)
    assert (forced - ref).abs().max().item() <= ATOL[torch.float32]
    assert torch.equal(attn_mod.attention(q, k, v, use_triton=False, **kw), ref)


def test_block_config_choice():
    assert attention_config(8, 72) == AttentionConfig(64, 64, 8, num_warps=4, num_stages=1)
    assert attention_config(17, 128).seqs_per_block == 2
    assert attention_config(32, 128).seqs_per_block == 2
    assert attention_config(33, 72).seqs_per_block == 1
    assert (attention_config(4096, 72).block_m, attention_config(4096, 72).block_n) == (128, 64)
    assert attention_config(4096, 64).num_warps == 4 and attention_config(4096, 128).num_warps == 8
    assert attention_config(4096, 72, torch.float32) == AttentionConfig(32, 32, 1, num_warps=4, num_stages=1)
    assert attention_config(8, 72, torch.float32).seqs_per_block == 4


@pytest.mark.parametrize(
    "kwargs",
    [dict(block_m=48, block_n=16), dict(block_m=8, block_n=16), dict(block_m=16, block_n=16, seqs_per_block=32)],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        AttentionConfig(**kwargs)


def test_reference_matches_stdit_self_attention():
    torch.manual_seed(0)
    b, n, heads, hd = 3, 11, 4, 72
    attn = SelfAttention(heads * hd, heads, rope=True).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(b, n, heads * hd)
        q, k, v = (lin(x).view(b, n, heads, hd).transpose(1, 2) for lin in (attn.q, attn.k, attn.v))
        # The module's own steps between the projections and proj.
        qn, kn = attn.rope(attn.q_norm(q)), attn.rope(attn.k_norm(k))
        expected = torch.nn.functional.scaled_dot_product_attention(qn, kn, v)
        got = attn_mod.attention_reference(
            q,
            k,
            v,
            q_norm_weight=attn.q_norm.weight,
            k_norm_weight=attn.k_norm.weight,
            eps=attn.q_norm.eps,
            rope_inv_freq=attn.rope.inv_freq,
        )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # And the whole forward, with proj applied to the reference's output.
        full = attn.proj(got.transpose(1, 2).reshape(b, n, heads * hd))
        torch.testing.assert_close(full, attn(x), atol=1e-5, rtol=1e-5)


def _bad_inputs() -> list:
    d = 64
    ok = torch.zeros(1, 2, 5, d)
    w, f = torch.ones(d), torch.ones(d // 2)
    return [
        pytest.param((torch.zeros(2, 5, d), ok, ok), {}, "4-D", id="3-D"),
        pytest.param((ok, torch.zeros(1, 2, 6, d), ok), {}, "same shape", id="shape-mismatch"),
        pytest.param((ok, ok, ok.half()), {}, "same dtype", id="dtype-mismatch"),
        pytest.param((ok.int(), ok.int(), ok.int()), {}, "dtype must be", id="int-dtype"),
        pytest.param((ok, ok.to("meta"), ok), {}, "same device", id="device-mismatch"),
        pytest.param((ok, ok, ok), {"q_norm_weight": torch.ones(d + 1)}, "q_norm_weight", id="norm-shape"),
        pytest.param((ok, ok, ok), {"k_norm_weight": w.to("meta")}, "k_norm_weight", id="norm-device"),
        pytest.param((ok, ok, ok), {"rope_inv_freq": torch.ones(d)}, "rope_inv_freq", id="rope-shape"),
        pytest.param((ok, ok, ok), {"rope_inv_freq": f.to("meta")}, "rope_inv_freq", id="rope-device"),
        pytest.param((ok, ok, ok), {"q_norm_weight": [1.0] * d}, "q_norm_weight", id="norm-not-tensor"),
        pytest.param(("q", ok, ok), {}, "torch.Tensor", id="not-tensor"),
    ]


@pytest.mark.parametrize("fn", ["attention_reference", "attention_triton"])
@pytest.mark.parametrize(("args", "kwargs", "match"), _bad_inputs())
def test_bad_inputs_raise(fn, args, kwargs, match):
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a for a in args)
    kwargs = {
        key: val.to(DEVICE) if isinstance(val, torch.Tensor) and val.device.type == "cpu" else val
        for key, val in kwargs.items()
    }
    with pytest.raises(ValueError, match=match):
        getattr(attn_mod, fn)(*args, **kwargs)


@pytest.mark.parametrize("d", [8, 63, 130, 256])
def test_unsupported_head_dim_raises(d):
    x = torch.zeros(1, 1, 4, d, device=DEVICE)
    with pytest.raises(ValueError, match="head dim"):
        attn_mod.attention_triton(x, x, x)


# --- full size, GPU only ---------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="full-size shapes need a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("d", [72, 128])
@pytest.mark.parametrize("prologue", ["none", "norm+rope"])
def test_gpu_spatial_full_size(dtype, d, prologue):
    q, k, v = make_qkv(2, 8, 4096, d, dtype)
    check(q, k, v, **prologue_kwargs(prologue, d))


@needs_cuda
@pytest.mark.parametrize("d", [72, 128])
@pytest.mark.parametrize("n", [8, 16, 32])
def test_gpu_temporal_full_size(d, n):
    # Every spatial position of a 64 x 64 latent x 16 heads: B*H = 65536 (> the grid's 65535 y-limit).
    b, h = 4096, 16
    g = torch.Generator(device=DEVICE).manual_seed(0)
    # (B, N, H, D) projections viewed as (B, H, N, D), as the temporal block produces them.
    q, k, v = (torch.randn(b, n, h, d, generator=g, device=DEVICE).to(torch.bfloat16).transpose(1, 2) for _ in range(3))
    check(q, k, v, **prologue_kwargs("norm+rope", d))
