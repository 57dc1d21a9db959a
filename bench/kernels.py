"""The Triton kernels of kdcvg.kernels against PyTorch, side by side, on a CUDA GPU.

For each kernel and shape: PyTorch eager (the reference), `torch.compile` of the reference, for attention
`F.scaled_dot_product_attention` (flash backend), and ours; milliseconds, our speed-up over each, and the
achieved TFLOP/s (attention, LoRA) or GB/s (adaLN) against the GPU's peak. Shapes: the embedded
kdcvg-tiny model's and Wan2.1-T2V-1.3B's (dim 1536, 12 heads of 128, ~32.8K tokens for 81 frames at
480x832: 21 latent frames x 1560 spatial tokens). Then one whole sampler step (DiT forward on the CFG
batch of 2) of an STDiT at Wan2.1-1.3B width with random weights: kernels on vs off.

    python bench/kernels.py [--dtype bf16] [--skip-step]

Needs CUDA: on a machine without it, it says so and exits 2 (the kernels' correctness tests run on CPU
under TRITON_INTERPRET=1; their speed means nothing there).
"""

# The lambdas handed to `timed` run inside their loop iteration, so late binding is harmless here.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

# Dense peaks (no sparsity) from NVIDIA's datasheets: TFLOP/s for bf16/fp16 tensor cores, GB/s HBM.
PEAKS = {"H100": (989.0, 3350.0), "H200": (989.0, 4800.0), "A100": (312.0, 2039.0)}


def peak() -> tuple[float, float]:
    name = torch.cuda.get_device_name()
    for key, value in PEAKS.items():
        if key in name:
            return value
    return float("nan"), float("nan")


def timed(fn: Callable[[], object], repeats: int = 20) -> float:
    """Median milliseconds of fn on the GPU, after warm-up (compilation, autotuning)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def row(name: str, shape: str, times: dict[str, float], ours: str, work: float, unit: str, top: float) -> None:
    t = times[ours]
    ratios = "  ".join(f"{k} {v:.3f} ms ({v / t:.2f}x)" for k, v in times.items() if k != ours)
    rate = work / (t * 1e-3) / (1e12 if unit == "TFLOP/s" else 1e9)
    print(f"{name:<18} {shape:<28} ours {t:.3f} ms  {ratios}  {rate:.1f} {unit} ({100 * rate / top:.0f}% of peak)")


def bench_attention(dtype: torch.dtype, tflops_peak: float) -> None:
    from kdcvg.kernels.attention import attention_reference, attention_triton

    cases = [
        # (name, batch, heads, sequence, head dim); kdcvg-tiny: d 192, 4 heads, 8 latent frames of 4x4 tokens,
        # 16 requests (32 CFG rows) in a batch
        ("tiny spatial", 32 * 8, 4, 16, 48),
        ("tiny temporal", 32 * 16, 4, 8, 48),
        ("wan spatial", 2 * 21, 12, 1560, 128),
        ("wan temporal", 2 * 1560, 12, 21, 128),
        ("wan full 3D", 2, 12, 32760, 128),
        ("opensora d72", 2 * 16, 16, 1020, 72),
    ]
    for name, b, h, n, d in cases:
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for _ in range(3))
        qn, kn = torch.rand(d, device="cuda") + 0.5, torch.rand(d, device="cuda") + 0.5
        inv = 1.0 / 10000 ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float32) / d)
        kw = {"q_norm_weight": qn, "k_norm_weight": kn, "rope_inv_freq": inv}
        compiled = torch.compile(attention_reference)
        times = {
            "ours": timed(lambda: attention_triton(q, k, v, **kw)),
            "eager": timed(lambda: attention_reference(q, k, v, **kw)),
            "compile": timed(lambda: compiled(q, k, v, **kw)),
            "sdpa-flash (no prologue)": timed(lambda: F.scaled_dot_product_attention(q, k, v)),
        }
        row(f"attention {name}", f"{b}x{h}x{n}x{d}", times, "ours", 4.0 * b * h * n * n * d, "TFLOP/s", tflops_peak)


def bench_lora(dtype: torch.dtype, tflops_peak: float) -> None:
    from kdcvg.kernels.lora import lora_delta_triton
    from kdcvg.priors.lora import lora_delta_reference

    for name, rows, n, d, r in (("tiny", 16, 128, 192, 128), ("wan", 8, 32760, 1536, 128)):
        x = torch.randn(rows, n, d, device="cuda", dtype=dtype)
        a = torch.randn(4, r, d, device="cuda", dtype=dtype) / d**0.5
        b = torch.randn(4, d, r, device="cuda", dtype=dtype) / r**0.5
        index = torch.tensor([i % 5 - 1 for i in range(rows)], device="cuda")
        scale = torch.ones(rows, device="cuda")
        compiled = torch.compile(lora_delta_reference)
        times = {
            "ours": timed(lambda: lora_delta_triton(x, a, b, index, scale)),
            "eager": timed(lambda: lora_delta_reference(x, a, b, index, scale)),
            "compile": timed(lambda: compiled(x, a, b, index, scale)),
        }
        used = int((index >= 0).sum())
        row(f"lora {name}", f"{rows}x{n}x{d} r{r}", times, "ours", 4.0 * used * n * d * r, "TFLOP/s", tflops_peak)


def bench_adaln(dtype: torch.dtype, gbs_peak: float) -> None:
    from kdcvg.kernels.adaln import (
        gated_residual_reference,
        gated_residual_triton,
        layernorm_modulate_reference,
        layernorm_modulate_triton,
    )

    for name, b, t, s, d in (("tiny", 2, 16, 16, 192), ("wan", 2, 21, 1560, 1536)):
        x = torch.randn(b, t, s, d, device="cuda", dtype=dtype)
        y = torch.randn_like(x)
        shift, scale, gate = (torch.randn(b, t, 1, d, device="cuda", dtype=dtype) for _ in range(3))
        nbytes = 2 * x.numel() * x.element_size()
        ln_c, gr_c = torch.compile(layernorm_modulate_reference), torch.compile(gated_residual_reference)
        times = {
            "ours": timed(lambda: layernorm_modulate_triton(x, shift, scale)),
            "eager": timed(lambda: layernorm_modulate_reference(x, shift, scale)),
            "compile": timed(lambda: ln_c(x, shift, scale)),
        }
        row(f"ln+modulate {name}", f"{b}x{t}x{s}x{d}", times, "ours", nbytes, "GB/s", gbs_peak)
        times = {
            "ours": timed(lambda: gated_residual_triton(x, gate, y)),
            "eager": timed(lambda: gated_residual_reference(x, gate, y)),
            "compile": timed(lambda: gr_c(x, gate, y)),
        }
        row(f"gated residual {name}", f"{b}x{t}x{s}x{d}", times, "ours", 1.5 * nbytes, "GB/s", gbs_peak)


def bench_step(dtype: torch.dtype) -> None:
    """One DiT forward on the CFG batch (2 rows) of an STDiT at Wan2.1-1.3B width: kernels on vs off."""
    from kdcvg.kernels import dispatch
    from kdcvg.models.stdit import STDiT, STDiTConfig

    # Wan2.1-1.3B: 30 blocks of d 1536 (here 15 spatial + 15 temporal pairs), 16 latent channels, latents
    # of 21 x 60 x 104 for 81 frames at 480x832, patch (1, 2, 2): 32,760 tokens.
    cfg = STDiTConfig(
        hidden=1536, depth=15, heads=12, in_channels=16, latent_frames=21, latent_height=60, latent_width=104
    )
    model = STDiT(cfg).to("cuda", dtype).eval()
    x = torch.randn(
        2, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width, device="cuda", dtype=dtype
    )
    t = torch.rand(2, device="cuda")
    y = torch.randn(2, 64, cfg.text_dim, device="cuda", dtype=dtype)
    mask = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    with torch.inference_mode():
        with dispatch.kernels(False):
            eager = timed(lambda: model(x, t, y, mask), repeats=5)
        with dispatch.kernels(True):
            ours = timed(lambda: model(x, t, y, mask), repeats=5)
    print(
        f"sampler step, STDiT d1536 x30 blocks, {cfg.num_tokens} tokens, CFG batch 2: "
        f"PyTorch eager SDPA {eager:.1f} ms, "
        f"kdcvg kernels {ours:.1f} ms ({eager / ours:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--skip-step", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU; none here. Correctness: pytest tests/test_kernel_*.py")
        sys.exit(2)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    tflops, gbs = peak()
    print(
        f"{torch.cuda.get_device_name()} (peak {tflops:g} TFLOP/s dense {args.dtype}, {gbs:g} GB/s); "
        f"torch {torch.__version__}; {platform.machine()}"
    )
    bench_attention(dtype, tflops)
    bench_lora(dtype, tflops)
    bench_adaln(dtype, gbs)
    if not args.skip_step:
        bench_step(dtype)


if __name__ == "__main__":
    main()
