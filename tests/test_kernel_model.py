"""The DiT with its Triton kernels wired in (attention with fused RMSNorm + RoPE, adaLN, gated residual,
multi-LoRA) gives the same output as its PyTorch path. On CPU the kernels run under the interpreter, on a
tiny model; the same call takes the kernels on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from kdcvg.kernels import dispatch
from kdcvg.kernels.attention import INTERPRETED
from kdcvg.kernels.lora import lora_delta
from kdcvg.models.stdit import STDiT, STDiTConfig
from kdcvg.priors.lora import LoRABatch, LoRAWeights, attach, set_lora_kernel, use_lora

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRETED, reason="on CPU the kernels need TRITON_INTERPRET=1 (set in conftest)"
)
# bf16 through 4 blocks of large random weights: both paths round at every op. The kernels' error against
# the same model in fp32 must stay within this factor of the PyTorch bf16 path's own error.
ERROR_RATIO = 1.5


def errors(model: STDiT, args: tuple, on: bool) -> tuple[float, float]:
    """Mean |error| against the fp32 model, of the bf16 PyTorch path and of the bf16 path with kernels."""
    gold_model = copy.deepcopy(model).float()
    gold = run(gold_model, tuple(a.float() if a.is_floating_point() else a for a in args), False)
    reference, fused = run(model, args, False), run(model, args, on)
    assert torch.isfinite(fused).all() and gold.abs().mean() > 0.1
    assert not torch.equal(fused, reference)  # the kernels did run (they round differently)
    return (reference - gold).abs().mean().item(), (fused - gold).abs().mean().item()


def tiny_model() -> STDiT:
    torch.manual_seed(0)
    cfg = STDiTConfig(hidden=32, depth=2, heads=2, latent_frames=4, latent_height=4, latent_width=4, text_dim=16)
    model = STDiT(cfg)
    with torch.no_grad():  # DiT init zeroes the gates and the final layer: randomise so every path shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.to(DEVICE, torch.bfloat16).eval()


def inputs(cfg: STDiTConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width, generator=g)
    y = torch.randn(3, 5, cfg.text_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.1, 0.5, 0.9])
    return x.to(DEVICE, torch.bfloat16), t.to(DEVICE), y.to(DEVICE, torch.bfloat16), mask.to(DEVICE)


def run(model: STDiT, args: tuple, on: bool) -> torch.Tensor:
    with torch.inference_mode(), dispatch.kernels(on, interpret_cpu=on and DEVICE == "cpu"):
        return model(*args).float()


def test_model_forward_with_kernels_matches_pytorch_path() -> None:
    model = tiny_model()
    args = inputs(model.config)
    ref_err, fused_err = errors(model, args, True)
    assert fused_err <= ERROR_RATIO * ref_err


def test_model_forward_with_per_row_loras_matches_pytorch_path() -> None:
    model = tiny_model()
    attach(model)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    stacks = [LoRAWeights.init(model, 4, generator=g) for _ in range(2)]
    for w in stacks:
        for v in w.b.values():
            v.detach().copy_(torch.randn(v.shape, generator=g) * 0.1)
    batch = LoRABatch(
        {k: torch.stack([w.a[k].detach() for w in stacks]).to(DEVICE, torch.bfloat16) for k in stacks[0].a},
        {k: torch.stack([w.b[k].detach() for w in stacks]).to(DEVICE, torch.bfloat16) for k in stacks[0].b},
        torch.tensor([1, -1, 0], device=DEVICE),
        torch.tensor([1.0, 1.0, 0.5], device=DEVICE),
    )
    args = inputs(model.config)
    set_lora_kernel(lora_delta)
    try:
        with use_lora(batch):
            ref_err, fused_err = errors(model, args, True)
    finally:
        set_lora_kernel(None)
    assert fused_err <= ERROR_RATIO * ref_err
