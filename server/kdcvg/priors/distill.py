"""DistillPrior: a motion LoRA from one reference clip, with the motion loss of VMC (paper 002, Eq. 10).

The reference's keyframes (the product's busiest span, paper 002 section 4.3, found by the detector-free
segmentation of `kdcvg.media.keyframes`) are cropped to the region the product moves through and resized
to the model's frame size; the autoencoder encodes them once. Each Adam step noises those latents at a few
timesteps and asks the LoRA-patched DiT for the velocity; the loss compares how the prediction changes
from one latent frame to the next with how the target changes (the frame residuals), not the frames
themselves, so the LoRA learns the motion and not the reference's appearance.

Our DiT predicts the rectified-flow velocity v = noise - x0 rather than the noise, so the residuals are
taken on v: delta v^n = v^{n+1} - v^n carries delta x0^n, the motion. Two readings of Eq. 10:

- `paper`: 1 - cos(delta v^n, delta v_theta^n) with the cosine over each residual's whole (C, h, w)
  vector, averaged over the frame pairs n, as the equation is written.
- `code`: VMC's released code: the absolute value of each residual, then the cosine along the
  frame-difference axis (one T-1 vector per latent position), averaged over positions.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from kdcvg.media.keyframes import product_boxes, select_keyframes
from kdcvg.models import rectified_flow as rf
from kdcvg.priors.lora import LoRAWeights, attach, max_rank, use_lora

LOSSES = ("paper", "code", "x0")


class DistillCancelled(Exception):
    """The caller went away; nothing was stored."""


@dataclass
class DistillConfig:
    rank: int = 128
    steps: int = 400
    learning_rate: float = 3e-3
    loss: str = "code"
    timesteps_per_step: int = 2
    seed: int = 0


def motion_loss(v_pred: torch.Tensor, v_true: torch.Tensor, kind: str = "paper") -> torch.Tensor:
    """Eq. 10 on velocity residuals between consecutive latent frames. v_* (B, C, T, h, w), T >= 2."""
    if v_pred.shape != v_true.shape or v_pred.dim() != 5 or v_pred.shape[2] < 2:
        raise ValueError(f"need two (B, C, T>=2, h, w) tensors of one shape, got {v_pred.shape} and {v_true.shape}")
    dp = (v_pred[:, :, 1:] - v_pred[:, :, :-1]).float()
    dt = (v_true[:, :, 1:] - v_true[:, :, :-1]).float()
    if kind == "paper":
        cos = F.cosine_similarity(dp.transpose(1, 2).flatten(2), dt.transpose(1, 2).flatten(2), dim=-1, eps=1e-6)
    elif kind == "code":
        cos = F.cosine_similarity(dp.abs(), dt.abs(), dim=2, eps=1e-6)
    else:
        raise ValueError(f"unknown motion loss {kind!r}; use one of {LOSSES}")
    return (1 - cos).mean()


def prepare_clip(frames: np.ndarray, length: int, width: int, height: int) -> np.ndarray:
    """The reference's keyframes, cropped to the product's path and resized: uint8 (length, height, width, 3)."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError("the reference clip needs at least two frames to show motion")
    n = frames.shape[0]
    if n >= length:
        idx = select_keyframes(frames, k=length)
    else:  # short clip: stretch over the model's length by repeating frames
        idx = [int(i) for i in np.round(np.linspace(0, n - 1, length))]
    clip = frames[idx]
    h, w = clip.shape[1:3]
    boxes = product_boxes(clip)
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    side = int(max(x1 - x0, y1 - y0) * 1.3)
    if side < 0.75 * min(h, w):  # the product moves within a small part of a large frame: zoom in on it
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        side = max(side, min(h, w) // 4)
        left = int(np.clip(cx - side // 2, 0, w - side))
        top = int(np.clip(cy - side // 2, 0, h - side))
        clip = clip[:, top : top + side, left : left + side]
    if clip.shape[1:3] != (height, width):
        clip = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in clip])
    return np.ascontiguousarray(clip)


def distill(
    model: torch.nn.Module,
    frames: np.ndarray,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    cfg: DistillConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[LoRAWeights, dict]:
    """Trains a LoRA on the reference clip; (weights, stats). `stop` set: raises DistillCancelled."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown motion loss {cfg.loss!r}; use one of {LOSSES}")
    if cfg.steps < 1:
        raise ValueError("steps must be at least 1")
    dit = model.dit
    attach(dit)
    rank = max(1, min(cfg.rank, max_rank(dit)))
    clip = prepare_clip(frames, model.frames, model.width, model.height)
    gen = torch.Generator().manual_seed(int(cfg.seed) % (2**63))
    started = time.perf_counter()
    with torch.no_grad():
        x0 = model.encode(clip[None]).float()
    device = x0.device
    y = (text_tokens[None] if text_tokens.dim() == 2 else text_tokens).float().to(device)
    m = (text_mask[None] if text_mask.dim() == 1 else text_mask).bool().to(device)
    k = cfg.timesteps_per_step
    y, m, x0 = y.expand(k, -1, -1), m.expand(k, -1), x0.expand(k, -1, -1, -1, -1)
    lora = LoRAWeights.init(dit, rank, generator=gen, device=device)
    opt = torch.optim.Adam(lora.parameters(), lr=cfg.learning_rate)
    shift = float(model.default_shift())
    losses: list[float] = []
    for step in range(1, cfg.steps + 1):
        if stop is not None and stop.is_set():
            raise DistillCancelled(f"cancelled at step {step - 1} of {cfg.steps}")
        t = rf.sample_training_timesteps(k, shift=shift, generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xt = rf.add_noise(x0, noise, t)
        with torch.enable_grad(), use_lora(lora.as_batch(k)):
            v = dit(xt, t, y, m)
            if cfg.loss == "x0":  # residuals of the clean-latent prediction x0 = x_t - t v
                tt = t.view(-1, 1, 1, 1, 1)
                loss = motion_loss(xt - tt * v, x0, "paper")
            else:
                loss = motion_loss(v, rf.velocity_target(x0, noise), cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora.parameters(), 1.0)
        opt.step()
        value = float(loss.item())
        if not math.isfinite(value):
            raise FloatingPointError(f"the motion loss diverged at step {step}; try a lower learning rate")
        losses.append(value)
        if progress is not None:
            progress(step, cfg.steps, value)
    final = float(np.mean(losses[-20:]))
    out = lora.detached()
    out.meta = {
        "final_loss": f"{final:.6f}",
        "loss": cfg.loss,
        "steps": str(cfg.steps),
        "learning_rate": str(cfg.learning_rate),
        "seed": str(cfg.seed),
    }
    stats = {"seconds": time.perf_counter() - started, "first_loss": losses[0], "final_loss": final}
    return out, stats
