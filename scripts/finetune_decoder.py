#!/usr/bin/env python
"""Fine-tune the video model's decoder alone, for sharper products and truer colours.

The encoder and the STDiT stay frozen, so the latent space the STDiT samples from does not move and the
shipped diffusion weights stay valid. Only the decoder learns, from ground-truth clips of the trained
motions, with three changes from the autoencoder's first training:

- the L1 + edge loss counts the product's pixels `--product-weight` times more than the background's (the
  colour judge and ProductScore look at the product; at 64 px it is a few hundred pixels of 4096);
- latents get Gaussian noise of a random scale up to `--latent-noise` (std units) before decoding, because
  the STDiT's samples are never exactly an encoder's latents and a decoder that only saw exact ones
  renders their errors as blur;
- more steps than the first training's 9-minute budget.

    python scripts/finetune_decoder.py --threads 2 --minutes 25           # resumable; writes the model dir

Checkpoints (decoder, optimizer, step, RNG) go to --work-dir every --ckpt-every steps and at the end; with
--resume a run continues exactly. At the end the decoder is written into --model-dir (the rest of the
weights unchanged) unless --no-export.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

from kdcvg.data import creatives as cr  # noqa: E402
from kdcvg.models.autoencoder import VideoAutoencoder  # noqa: E402
from kdcvg.models.checkpoint import rng_state, save_checkpoint, set_rng_state, start_run  # noqa: E402
from kdcvg.models.video_model import VideoModel  # noqa: E402

HELD_OUT = ("orbit", "shake", "pulse")
TRAIN_MOTIONS = tuple(m for m in cr.MOTIONS if m not in HELD_OUT)
SEED_BASE = 3_000_000  # clips of this phase; the first autoencoder phase used 1_000_000 + step * clips
log = logging.getLogger("finetune_decoder")


def batch(step: int, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames in [-1, 1] (B, T, H, W, 3) and per-pixel loss weights (B, T, H, W, 1) from product alpha."""
    frames, alphas = [], []
    for i in range(clips):
        spec = cr.sample_spec(SEED_BASE + step * clips + i, motions=TRAIN_MOTIONS)
        f, a = cr.render_with_alpha(spec)
        frames.append(f)
        alphas.append(a)
    return VideoAutoencoder.to_float(np.stack(frames)), torch.from_numpy(np.stack(alphas))[..., None]


def weighted_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 on pixels and on horizontal/vertical differences, each pixel weighted by w (B, T, H, W, 1)."""
    l1 = ((x - y).abs() * w).sum() / (w.sum() * 3)
    dx = ((x[:, :, :, 1:] - x[:, :, :, :-1]) - (y[:, :, :, 1:] - y[:, :, :, :-1])).abs() * w[:, :, :, 1:]
    dy = ((x[:, :, 1:] - x[:, :, :-1]) - (y[:, :, 1:] - y[:, :, :-1])).abs() * w[:, :, 1:]
    edge = dx.sum() / (w[:, :, :, 1:].sum() * 3) + dy.sum() / (w[:, :, 1:].sum() * 3)
    return l1 + edge_weight * edge


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "server" / "kdcvg" / "weights" / "kdcvg-tiny")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "train" / "decoder-ft")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int, default=3000, help="sets the lr schedule; --minutes may stop earlier")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--clips", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--product-weight", type=float, default=4.0)
    p.add_argument("--edge-weight", type=float, default=1.0)
    p.add_argument("--latent-noise", type=float, default=0.2, help="max noise std on normalised latents")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--export", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--export-dir", type=Path, default=None, help="where to write the model (default --model-dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[int, int]:
    """Returns the steps this invocation started and stopped at."""
    args = parse_args(argv)
    gen = start_run(args.work_dir, threads=args.threads, seed=args.seed)
    ckpt = args.work_dir / "decoder.pt"
    model = VideoModel.load(args.model_dir)
    ae = model.autoencoder
    ae.requires_grad_(False)
    decoder = ae.decoder
    decoder.requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.0)
    step = 0
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["opt"])
        set_rng_state(gen, state["rng"])
        step = state["step"]
        log.info("resumed at step %d", step)

    def lr_at(s: int) -> float:
        warm = min(1.0, (s + 1) / 50)
        return args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))

    first = step
    deadline = time.monotonic() + args.minutes * 60
    bar = tqdm(total=args.steps, initial=step, desc="decoder", dynamic_ncols=True, mininterval=5)
    losses: list[float] = []
    decoder.train()
    while step < args.steps and time.monotonic() < deadline:
        x, alpha = batch(step, args.clips)
        w = 1.0 + (args.product_weight - 1.0) * alpha
        with torch.no_grad():
            z = ae.encode(x)
        scale = torch.rand(z.shape[0], 1, 1, 1, 1, generator=gen) * args.latent_noise
        z = z + scale * torch.randn(z.shape, generator=gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            y = ae.decode(z)
        loss = weighted_loss(x, y.float(), w, args.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
            log.info("step %d loss %.4f lr %.2e", step, np.mean(losses[-25:]), lr_at(step))
        if step % args.ckpt_every == 0 or step == args.steps or time.monotonic() >= deadline:
            save_checkpoint(
                ckpt,
                {
                    "step": step,
                    "decoder": decoder.state_dict(),
                    "opt": opt.state_dict(),
                    "rng": rng_state(gen),
                    "args": vars(args),
                },
            )
    bar.close()
    decoder.eval()
    recent = f"; loss (last 25) {np.mean(losses[-25:]):.4f}" if losses else ""
    print(f"decoder fine-tune at step {step} of {args.steps}{recent}")
    if args.export:
        out = model.save(args.export_dir or args.model_dir)
        print(f"wrote {out}")
    return first, step


if __name__ == "__main__":
    main()
