"""Rectified flow: training timesteps, the resolution-aware shift, Euler sampling with one-batch CFG.

Convention: x_t = (1 - t) * x0 + t * noise, so t = 1 is pure noise and t = 0 the data; the model predicts
the velocity v = noise - x0 (dx_t/dt), and an Euler step from t to t_next < t is x + (t_next - t) * v.

This module knows nothing about the network: `sample` takes any `velocity_fn(x, t) -> v`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step, total, x): called after each step (step counts from 1); it may raise to stop sampling.
StepCallback = Callable[[int, int, torch.Tensor], None]


def shift_timesteps(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """t' = shift * t / (1 + (shift - 1) * t): more time near t = 1 (noise) for shift > 1."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(num_tokens: int, *, base_tokens: int = 128, base_shift: float = 4.0) -> float:
    """OpenSora v1.2's resolution-aware shift: base_shift * sqrt(num_tokens / base_tokens).

    OpenSora scales by sqrt(pixels / 512^2) * sqrt(frames); counting latent tokens is the same ratio.
    """
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError("num_tokens and base_tokens must be positive")
    return base_shift * math.sqrt(num_tokens / base_tokens)


def sample_training_timesteps(
    batch: int,
    *,
    shift: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logit-normal t = sigmoid(N(mean, std)), then the timestep shift; float32 (batch,) in (0, 1)."""
    u = torch.randn(batch, generator=generator, device=device) * std + mean
    return shift_timesteps(torch.sigmoid(u), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, t (B,) broadcast over the other dims."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def sampling_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 (noise) down to 0, evenly spaced then shifted: float64 (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_timesteps(t, shift)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next."""
    return x + (t_next - t) * velocity


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    return v_uncond + guidance * (v_cond - v_uncond)


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    *,
    steps: int = 30,
    guidance: float = 2.0,
    shift: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from noise (t = 1) to data (t = 0) in `steps` Euler steps.

    With guidance != 1, each step calls velocity_fn ONCE on a doubled batch: rows [0, B) are the
    conditional rows and rows [B, 2B) the unconditional ones (the caller's velocity_fn pairs them with the
    text and the empty text); v = v_uncond + guidance * (v_cond - v_uncond). With guidance == 1 it calls
    velocity_fn on the B conditional rows only. t is passed as a (rows,) float32 tensor.
    """
    ts = sampling_timesteps(steps, shift).tolist()
    x = noise
    b = x.shape[0]
    cfg = guidance != 1.0
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        if cfg:
            xx = torch.cat([x, x], dim=0)
            tt = torch.full((2 * b,), t, dtype=torch.float32, device=x.device)
            v = velocity_fn(xx, tt)
            v = guide(v[:b], v[b:], guidance)
        else:
            v = velocity_fn(x, torch.full((b,), t, dtype=torch.float32, device=x.device))
        x = euler_step(x, v.to(x.dtype), t, t_next)
        if callback is not None:
            callback(i + 1, steps, x)
    return x
