#!/usr/bin/env python
"""Train kdcvg's embedded video model (autoencoder, then STDiT) on procedural ad creatives.

    python scripts/train_video_model.py --threads 1 --ae-only                 # autoencoder (~9 min)
    python scripts/train_video_model.py --resume --threads 2 --minutes 56     # STDiT (continues exactly)

Phases: (1) the autoencoder on random clips; (2) latent statistics and a pool of encoded clips with their
texts' token states (refreshed in part every --refresh-every steps); (3) the STDiT with rectified flow.
Motions orbit, shake and pulse are held out (left for the knowledge base). Checkpoints (model, EMA,
optimizer, step, RNG) go to --work-dir every --ckpt-every steps and at the end; the EMA weights are
exported to --export-dir (config.json + model.safetensors, bf16) at every checkpoint, so a usable model is
always there. Every --eval-every steps a handful of clips is sampled and checked by a simple judge
(foreground centroid/area/orientation tracks against templates from ground-truth clips; dominant
foreground colour against the prompt's colour).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

from kdcvg.data import creatives as cr  # noqa: E402
from kdcvg.generation.pipeline import fuse_reference, prompt_text  # noqa: E402
from kdcvg.models import rectified_flow as rf  # noqa: E402
from kdcvg.models.autoencoder import AutoencoderConfig, VideoAutoencoder, reconstruction_loss  # noqa: E402
from kdcvg.models.checkpoint import rng_state, save_checkpoint, set_rng_state, start_run  # noqa: E402
from kdcvg.models.stdit import STDiTConfig, count_parameters  # noqa: E402
from kdcvg.models.video_model import VideoModel  # noqa: E402

HELD_OUT = ("orbit", "shake", "pulse")
TRAIN_MOTIONS = tuple(m for m in cr.MOTIONS if m not in HELD_OUT)
MAX_TEXT_TOKENS = 64
AE_SEED_BASE = 1_000_000
POOL_SEED_BASE = 0
REF_SEED_BASE = 20_000_000  # the "retrieved" reference of a pool clip, same motion, another creative
EVAL_SEED_BASE = 50_000_000  # eval prompts never appear in training
log = logging.getLogger("train")


# ------------------------------------------------------------------------------------------------------
# texts


def clip_texts(c: cr.Creative, seed: int) -> list[str]:
    """The request-like texts of a clip: its caption; the request ("<colour> <product>: <points>"); the
    points alone; and the request fused, as `semantic` mode fuses it, with the caption of another creative
    of the same motion (the reference retrieval would return; its product and colour swapped for ours)."""
    product = f"{c.spec.color} {c.product}"
    request = prompt_text(product, c.selling_points)
    ref = cr.make_creative(REF_SEED_BASE + seed, motions=[c.motion])
    fused = fuse_reference(request, product, ref.caption, ref.product)
    return [c.caption, request, "; ".join(c.selling_points), fused]


TEXT_VARIANTS = 4
TEXT_VARIANT_PROBS = (0.3, 0.35, 0.1, 0.25)


class TextCache:
    """Unique texts -> token states (fp16, padded to MAX_TEXT_TOKENS) from the project's text encoder."""

    def __init__(self, encoder) -> None:  # noqa: ANN001
        self.encoder = encoder
        self.index: dict[str, int] = {}
        self.states = torch.zeros(0, MAX_TEXT_TOKENS, 384, dtype=torch.float16)
        self.masks = torch.zeros(0, MAX_TEXT_TOKENS, dtype=torch.bool)
        self.truncated = 0

    def ids(self, texts: list[str]) -> list[int]:
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        if new:
            states, masks = encode_padded(self.encoder, new)
            self.truncated += int((masks.sum(1) >= MAX_TEXT_TOKENS).sum())
            base = len(self.index)
            for i, t in enumerate(new):
                self.index[t] = base + i
            self.states = torch.cat([self.states, states])
            self.masks = torch.cat([self.masks, masks])
        return [self.index[t] for t in texts]


def encode_padded(encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    states, masks = encoder.encode_tokens(texts)
    n, length, dim = states.shape
    out = np.zeros((n, MAX_TEXT_TOKENS, dim), np.float32)
    m = np.zeros((n, MAX_TEXT_TOKENS), bool)
    k = min(length, MAX_TEXT_TOKENS)
    out[:, :k], m[:, :k] = states[:, :k], masks[:, :k]
    return torch.from_numpy(out).half(), torch.from_numpy(m)


# ------------------------------------------------------------------------------------------------------
# a simple judge for training-time signal


def _foreground(frames: np.ndarray) -> np.ndarray:
    """Boolean (T, H, W) mask of pixels far from the per-row background colour, overlay text removed."""
    f = frames.astype(np.float32)
    t, h, w, _ = f.shape
    border = np.concatenate([f[:, :, :2], f[:, :, -2:]], axis=2)  # (T, H, 4, 3)
    bg = np.median(border.transpose(1, 0, 2, 3).reshape(h, -1, 3), axis=1)  # (H, 3)
    mask = np.linalg.norm(f - bg[None, :, None], axis=-1) > 60
    band = np.zeros((h, w), bool)
    band[: int(0.16 * h)] = True
    band[-int(0.14 * h) :] = True
    steady = mask.mean(0) > 0.9
    mask &= ~(steady & band)[None]
    return mask


def track_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(motion feature vector, foreground pixels of the eroded mask) of a (T, H, W, 3) uint8 clip.

    Features: centroid x track, centroid y track (minus its mean), log-area track (minus its mean), and
    the shape change between consecutive frames once the translation is removed (rotation).
    """
    import cv2

    mask = _foreground(frames)
    t, h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy, la = [], [], []
    for i in range(t):
        m = mask[i]
        a = max(int(m.sum()), 4)
        cx.append(xs[m].mean() / w if m.any() else 0.5)
        cy.append(ys[m].mean() / h if m.any() else 0.5)
        la.append(math.log(a / (h * w)))
    cx, cy, la = map(np.asarray, (cx, cy, la))
    change = []
    for i in range(t - 1):
        dx, dy = round((cx[i + 1] - cx[i]) * w), round((cy[i + 1] - cy[i]) * h)
        moved = np.roll(mask[i], (dy, dx), axis=(0, 1))
        change.append((moved ^ mask[i + 1]).sum() / max(mask[i].sum() + mask[i + 1].sum(), 8))
    rot = float(np.median(change)) - 0.5 * abs(float(np.mean(np.diff(la))))  # zoom also changes the mask
    feat = np.concatenate([(cx - 0.5) * 4, (cy - cy.mean()) * 4, (la - la.mean()) * 1.0, np.full(4, rot * 6)])
    kernel = np.ones((3, 3), np.uint8)
    core = np.stack([cv2.erode(m.astype(np.uint8), kernel).astype(bool) for m in mask])
    fg = frames[core] if core.sum() >= 8 else (frames[mask] if mask.any() else frames.reshape(-1, 3))
    return feat, fg


class SimpleJudge:
    """Nearest template (mean feature track of ground-truth clips per motion) + nearest named colour."""

    def __init__(self, motions: tuple[str, ...] = TRAIN_MOTIONS, per_motion: int = 30, seed: int = 90_000_000) -> None:
        self.motions = motions
        feats = {m: [] for m in motions}
        for i in range(per_motion * len(motions)):
            c = cr.make_creative(seed + i, motions=[motions[i % len(motions)]])
            feats[c.motion].append(track_features(c.frames)[0])
        self.templates = np.stack([np.mean(feats[m], axis=0) for m in motions])
        # Each named colour with its darker and lighter feature shades (as the renderer paints them); a
        # pixel votes for the base name of its nearest entry.
        self.color_names = list(cr.COLORS)
        entries, owners = [], []
        for k, name in enumerate(self.color_names):
            rgb = cr.COLORS[name]
            for e in (rgb, cr._mix(rgb, 0.0, 0.5), cr._mix(rgb, 255.0, 0.6)):
                entries.append(e)
                owners.append(k)
        self.color_rgb = np.array(entries, np.float32)
        self.color_owner = np.array(owners)

    def __call__(self, frames: np.ndarray) -> tuple[str, str]:
        feat, fg = track_features(frames)
        motion = self.motions[int(np.argmin(((self.templates - feat) ** 2).sum(1)))]
        d = ((fg[:, None, :].astype(np.float32) - self.color_rgb[None]) ** 2).sum(-1)  # per-pixel vote
        votes = np.bincount(self.color_owner[d.argmin(1)], minlength=len(self.color_names))
        return motion, self.color_names[int(votes.argmax())]


# ------------------------------------------------------------------------------------------------------
# checkpoints


# ------------------------------------------------------------------------------------------------------
# autoencoder phase


def ae_batch(step: int, clips: int) -> torch.Tensor:
    frames = [cr.make_creative(AE_SEED_BASE + step * clips + i, motions=TRAIN_MOTIONS).frames for i in range(clips)]
    return VideoAutoencoder.to_float(np.stack(frames))


def train_autoencoder(args, ae: VideoAutoencoder, ckpt_path: Path, state: dict | None) -> None:  # noqa: ANN001
    device = torch.device(args.device)
    opt = torch.optim.AdamW(ae.parameters(), lr=args.ae_lr, weight_decay=0.0)
    step = 0
    if state is not None:
        ae.load_state_dict(state["ae"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    total = args.ae_steps

    def lr_at(s: int) -> float:
        warm = min(1.0, (s + 1) / 100)
        return args.ae_lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))

    deadline = time.monotonic() + args.ae_minutes * 60
    bar = tqdm(total=total, initial=step, desc="autoencoder", dynamic_ncols=True, mininterval=5)
    ae.train()
    t0, losses = time.monotonic(), []
    while step < total:
        x = ae_batch(step, args.ae_clips).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            y = ae(x)
        loss = reconstruction_loss(x, y.float(), edge_weight=args.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            l1 = (x - y.float()).abs().mean().item() / 2  # in [0, 1] pixel units
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", l1=f"{l1:.4f}")
            log.info(
                "ae step %d loss %.4f l1(0-1) %.4f lr %.2e %.2fs/step",
                step,
                np.mean(losses[-50:]),
                l1,
                lr_at(step),
                (time.monotonic() - t0) / 50,
            )
            t0 = time.monotonic()
        done = step == total or time.monotonic() > deadline
        if step % args.ckpt_every == 0 or done:
            save_checkpoint(
                ckpt_path,
                {
                    "phase": "ae",
                    "step": step,
                    "ae": ae.state_dict(),
                    "opt": opt.state_dict(),
                    "ae_config": ae.config.to_dict(),
                    "done": done,  # finished by steps or by --ae-minutes: a resume goes on to the DiT
                },
            )
        if time.monotonic() > deadline:
            log.info("ae time budget reached at step %d of %d", step, total)
            break
    bar.close()
    ae.eval()


@torch.no_grad()
def encode_clips(
    ae: VideoAutoencoder, frames: np.ndarray, device: torch.device, bf16: bool, batch: int = 64
) -> torch.Tensor:
    out = []
    for i in range(0, len(frames), batch):
        x = VideoAutoencoder.to_float(frames[i : i + batch]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(ae.encode_raw(x).float().cpu())
    return torch.cat(out)


def save_recon_png(ae: VideoAutoencoder, path: Path, device: torch.device) -> float:
    """Original rows vs reconstruction rows for rotating clips; returns the L1 (0-1 units)."""
    import cv2

    clips = [cr.make_creative(EVAL_SEED_BASE + 7 + i, motions=["rotate"]).frames for i in range(3)]
    x = VideoAutoencoder.to_float(np.stack(clips)).to(device)
    with torch.no_grad():
        y = ae(x).float().cpu()
    rec = VideoAutoencoder.to_uint8(y).numpy()
    rows = []
    for o, r in zip(clips, rec, strict=True):
        rows.append(np.concatenate(list(o[::2]), axis=1))
        rows.append(np.concatenate(list(r[::2]), axis=1))
    img = np.concatenate(rows, axis=0)
    img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), img[..., ::-1])
    return float((x.cpu() - y).abs().mean() / 2)


# ------------------------------------------------------------------------------------------------------
# latent pool


class Pool:
    """`size` encoded clips with their text ids; slot j holds seed POOL_SEED_BASE + j + size * r_j where r_j
    counts how often slot j was refreshed, so the pool at any step is rebuilt exactly on resume."""

    def __init__(self, size: int, refresh: int) -> None:
        self.size, self.refresh = size, refresh
        self.generation = np.zeros(size, np.int64)
        self.latents: torch.Tensor | None = None
        self.text_ids = torch.zeros(size, TEXT_VARIANTS, dtype=torch.long)
        self.motion = [""] * size

    def seeds(self, slots: np.ndarray) -> np.ndarray:
        return POOL_SEED_BASE + slots + self.size * self.generation[slots]

    def fill(
        self,
        slots: np.ndarray,
        ae: VideoAutoencoder,
        texts: TextCache,
        device: torch.device,
        bf16: bool,
        stats: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        seeds = [int(s) for s in self.seeds(slots)]
        clips = [cr.make_creative(s, motions=TRAIN_MOTIONS) for s in seeds]
        raw = encode_clips(ae, np.stack([c.frames for c in clips]), device, bf16)
        all_texts = [t for c, s in zip(clips, seeds, strict=True) for t in clip_texts(c, s)]
        ids = torch.tensor(texts.ids(all_texts)).view(len(clips), TEXT_VARIANTS)
        self.text_ids[slots] = ids
        for j, c in zip(slots, clips, strict=True):
            self.motion[j] = c.motion
        if self.latents is None:
            self.latents = torch.zeros(self.size, *raw.shape[1:])
        if stats is not None:
            mean, std = stats
            self.latents[slots] = (raw - mean) / std
        return raw

    def refresh_slots(self, k: int) -> np.ndarray:
        """Slots replaced by the k-th refresh (k from 0), round robin."""
        per = self.size // self.refresh
        start = (k % per) * self.refresh
        return np.arange(start, start + self.refresh)


# ------------------------------------------------------------------------------------------------------
# evaluation


def eval_prompts(n_per_motion: int) -> list[cr.Creative]:
    out = []
    for i in range(n_per_motion * len(TRAIN_MOTIONS)):
        out.append(cr.make_creative(EVAL_SEED_BASE + i, motions=[TRAIN_MOTIONS[i % len(TRAIN_MOTIONS)]]))
    return out


@torch.no_grad()
def evaluate(
    model: VideoModel,
    judge: SimpleJudge,
    prompts: list[cr.Creative],
    states: torch.Tensor,
    masks: torch.Tensor,
    steps: int,
    guidance: float,
    frame_conditioning: bool = True,
) -> dict:
    model.eval()
    vfn = None
    if not frame_conditioning:

        def vfn(x, t, y, m):  # noqa: ANN001, ANN202
            return model.dit(x, t, y, m, frame_conditioning=False)

    frames = model.generate(states.float(), masks, steps=steps, guidance=guidance, seed=123, velocity_fn=vfn)
    per: dict[str, list[int]] = {}
    motion_ok = color_ok = 0
    for c, f in zip(prompts, frames.numpy(), strict=True):
        m, col = judge(f)
        ok = m == c.motion
        motion_ok += ok
        color_ok += col == c.spec.color
        per.setdefault(c.motion, []).append(int(ok))
    n = len(prompts)
    return {
        "motion": motion_ok / n,
        "color": color_ok / n,
        "per_motion": {k: sum(v) / len(v) for k, v in per.items()},
        "frames": frames,
    }


def contact_sheet(frames: torch.Tensor, path: Path, rows: int = 7) -> None:
    import cv2

    f = frames.numpy()[:rows, ::2]  # (rows, 8, H, W, 3)
    img = np.concatenate([np.concatenate(list(r), axis=1) for r in f], axis=0)
    img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), img[..., ::-1])


# ------------------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "train" / "kdcvg-tiny")
    p.add_argument("--export-dir", type=Path, default=ROOT / "server" / "kdcvg" / "weights" / "kdcvg-tiny")
    p.add_argument("--encoder-cache", type=Path, default=ROOT / ".cache" / "models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    # autoencoder
    p.add_argument("--ae-steps", type=int, default=1700)
    p.add_argument("--ae-minutes", type=float, default=9.0)
    p.add_argument("--ae-clips", type=int, default=8, help="clips per autoencoder step (x8 frame pairs)")
    p.add_argument("--ae-lr", type=float, default=6e-4, help="2e-3 diverged (no norm layers)")
    p.add_argument("--ae-only", action="store_true", help="stop after the autoencoder phase")
    p.add_argument("--edge-weight", type=float, default=1.0)
    p.add_argument("--latent-channels", type=int, default=8)
    p.add_argument("--ae-channels", type=int, nargs=3, default=(32, 64, 128))
    # DiT
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--depth", type=int, default=4, help="pairs of spatial+temporal blocks")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--frame-conditioning", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--decay", type=float, default=0.2, help="fraction of --max-steps with a linear lr decay")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--drop-text", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=4.0, help="training timestep shift (base shift at 128 tokens)")
    p.add_argument("--max-steps", type=int, default=2900, help="sets the lr schedule; --minutes may stop earlier")
    p.add_argument("--minutes", type=float, default=40.0, help="wall budget for this invocation's DiT phase")
    p.add_argument("--pool", type=int, default=2048)
    p.add_argument("--refresh", type=int, default=256)
    p.add_argument("--refresh-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--eval-per-motion", type=int, default=3)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--bench", type=int, default=0, help="time N DiT steps (compiled or not) and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gen = start_run(args.work_dir, threads=args.threads, seed=args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    ae_ckpt, dit_ckpt = args.work_dir / "ae.pt", args.work_dir / "dit.pt"
    log.info("start %s", " ".join(sys.argv))

    from kdcvg.text.encoder import TextEncoder

    encoder = TextEncoder.load(args.encoder_cache, precision="fp32")
    null_states, null_mask = encoder.encode_tokens([""])
    null_text = torch.from_numpy(null_states[0, : int(null_mask[0].sum())])

    # --- phase 1: autoencoder ------------------------------------------------------------------------
    ae_cfg = AutoencoderConfig(
        latent_channels=args.latent_channels,
        channels=tuple(args.ae_channels),
        latent_mean=[0.0] * args.latent_channels,
        latent_std=[1.0] * args.latent_channels,
    )
    dit_state = torch.load(dit_ckpt, weights_only=False) if (args.resume and dit_ckpt.exists()) else None
    if dit_state is not None:
        ae_cfg = AutoencoderConfig.from_dict(dit_state["ae_config"])
    ae = VideoAutoencoder(ae_cfg).to(device)
    log.info("autoencoder: %d parameters", count_parameters(ae))
    if dit_state is None:
        ae_state = torch.load(ae_ckpt, weights_only=False) if (args.resume and ae_ckpt.exists()) else None
        if ae_state is not None and (ae_state.get("done") or ae_state["step"] >= args.ae_steps):
            ae.load_state_dict(ae_state["ae"])
            log.info("autoencoder loaded from %s (step %d)", ae_ckpt, ae_state["step"])
        elif args.bench:
            pass
        else:
            train_autoencoder(args, ae, ae_ckpt, ae_state)
        ae.eval()
        l1 = save_recon_png(ae, args.work_dir / "ae_rotate.png", device)
        log.info("autoencoder rotate-clip L1 (0-1 units): %.4f, sheet %s", l1, args.work_dir / "ae_rotate.png")
        if args.ae_only:
            print(f"autoencoder done: rotate-clip L1 {l1:.4f}; {args.work_dir / 'ae_rotate.png'}")
            return
    else:
        ae.load_state_dict(dit_state["ae"])
    ae.eval()
    for p_ in ae.parameters():
        p_.requires_grad_(False)

    # --- phase 2: pool and latent statistics ---------------------------------------------------------
    texts = TextCache(encoder)
    pool = Pool(args.pool, args.refresh)
    t0 = time.monotonic()
    if dit_state is None:
        raw = pool.fill(np.arange(args.pool), ae, texts, device, args.bf16, None)
        mean = raw.transpose(0, 1).reshape(raw.shape[1], -1).mean(1)
        std = raw.transpose(0, 1).reshape(raw.shape[1], -1).std(1)
        ae.config.latent_mean = [float(v) for v in mean]
        ae.config.latent_std = [float(v) for v in std]
        pool.latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
        refreshes = 0
    else:
        refreshes = dit_state["refreshes"]
        pool.generation = dit_state["pool_generation"].copy()
        mean = torch.tensor(ae.config.latent_mean)
        std = torch.tensor(ae.config.latent_std)
        raw = pool.fill(np.arange(args.pool), ae, texts, device, args.bf16, None)
        pool.latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    stats = (mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1))
    log.info(
        "pool of %d clips encoded in %.1fs, latent %s, %d unique texts (%d truncated at %d tokens)",
        args.pool,
        time.monotonic() - t0,
        tuple(pool.latents.shape[1:]),
        len(texts.index),
        texts.truncated,
        MAX_TEXT_TOKENS,
    )

    # --- phase 3: DiT --------------------------------------------------------------------------------
    c, tl, hl, wl = pool.latents.shape[1:]
    dit_cfg = STDiTConfig(
        in_channels=c,
        latent_frames=tl,
        latent_height=hl,
        latent_width=wl,
        hidden=args.hidden,
        depth=args.depth,
        heads=args.heads,
        frame_conditioning=args.frame_conditioning,
    )
    if dit_state is not None:
        dit_cfg = STDiTConfig.from_dict(dit_state["dit_config"])
    model = VideoModel(
        ae.config, dit_cfg, null_text=null_text, sampling={"base_tokens": dit_cfg.num_tokens, "base_shift": args.shift}
    ).to(device)
    model.autoencoder.load_state_dict(ae.state_dict())
    dit = model.dit
    ema = VideoModel(ae.config, dit_cfg, null_text=null_text, sampling=model.sampling).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    log.info(
        "STDiT: %d parameters, %d tokens per clip, latent %s, hidden %d, %d blocks",
        count_parameters(dit),
        dit_cfg.num_tokens,
        (c, tl, hl, wl),
        dit_cfg.hidden,
        2 * dit_cfg.depth,
    )
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = 0
    history: list[dict] = []
    if dit_state is not None:
        dit.load_state_dict(dit_state["dit"])
        ema.dit.load_state_dict(dit_state["ema"])
        opt.load_state_dict(dit_state["opt"])
        step = dit_state["step"]
        history = dit_state.get("history", [])
        set_rng_state(gen, dit_state["rng"])
        log.info("resumed at step %d", step)
    train_fwd = torch.compile(dit) if args.compile else dit

    null_y = torch.zeros(MAX_TEXT_TOKENS, null_text.shape[1], dtype=torch.float16)
    null_y[: null_text.shape[0]] = null_text.half()
    null_m = torch.zeros(MAX_TEXT_TOKENS, dtype=torch.bool)
    null_m[: null_text.shape[0]] = True
    probs = torch.tensor(TEXT_VARIANT_PROBS)

    def batch_at() -> tuple[torch.Tensor, ...]:
        idx = torch.randint(args.pool, (args.batch,), generator=gen)
        variant = torch.multinomial(probs, args.batch, replacement=True, generator=gen)
        tid = pool.text_ids[idx, variant]
        y, m = texts.states[tid].clone(), texts.masks[tid].clone()
        drop = torch.rand(args.batch, generator=gen) < args.drop_text
        y[drop], m[drop] = null_y, null_m
        t = rf.sample_training_timesteps(args.batch, shift=args.shift, generator=gen)
        noise = torch.randn(args.batch, *pool.latents.shape[1:], generator=gen)
        return pool.latents[idx], y.float(), m, t, noise

    def loss_on(fwd, x0, y, m, t, noise, **kw) -> torch.Tensor:  # noqa: ANN001
        x0, y, m, t, noise = (v.to(device) for v in (x0, y, m, t, noise))
        xt = rf.add_noise(x0, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            v = fwd(xt, t, y, m, **kw)
        return F.mse_loss(v.float(), rf.velocity_target(x0, noise))

    # fixed probe batch for the conditioning check (true text vs shuffled text vs no frame conditioning)
    probe_gen = torch.Generator().manual_seed(777)
    pidx = torch.randint(args.pool, (64,), generator=probe_gen)
    ptid = pool.text_ids[pidx, 1]
    probe = (
        pool.latents[pidx].clone(),
        texts.states[ptid].float(),
        texts.masks[ptid].clone(),
        rf.sample_training_timesteps(64, shift=args.shift, generator=probe_gen),
        torch.randn(64, c, tl, hl, wl, generator=probe_gen),
    )
    perm = torch.roll(torch.arange(64), 1)

    judge = SimpleJudge()
    prompts = eval_prompts(args.eval_per_motion)
    eval_texts = [clip_texts(p, EVAL_SEED_BASE + i) for i, p in enumerate(prompts)]
    p_states, p_masks = encode_padded(encoder, [t[1] for t in eval_texts])
    f_states, f_masks = encode_padded(encoder, [t[3] for t in eval_texts])
    gt = [judge(p.frames) for p in prompts]
    log.info(
        "simple judge on the ground-truth eval clips: motion %.0f%%, colour %.0f%%",
        100 * np.mean([g[0] == p.motion for g, p in zip(gt, prompts, strict=True)]),
        100 * np.mean([g[1] == p.spec.color for g, p in zip(gt, prompts, strict=True)]),
    )

    def export() -> None:
        ema.save(args.export_dir)

    def checkpoint() -> None:
        save_checkpoint(
            dit_ckpt,
            {
                "phase": "dit",
                "step": step,
                "dit": dit.state_dict(),
                "ema": ema.dit.state_dict(),
                "ae": model.autoencoder.state_dict(),
                "opt": opt.state_dict(),
                "rng": rng_state(gen),
                "refreshes": refreshes,
                "pool_generation": pool.generation.copy(),
                "history": history,
                "ae_config": ae.config.to_dict(),
                "dit_config": dit_cfg.to_dict(),
                "args": vars(args)
                | {
                    "work_dir": str(args.work_dir),
                    "export_dir": str(args.export_dir),
                    "encoder_cache": str(args.encoder_cache),
                },
            },
        )
        export()

    if args.bench:
        dit.train()
        for i in range(args.bench):
            t1 = time.monotonic()
            loss = loss_on(train_fwd, *batch_at())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            print(f"bench step {i}: {time.monotonic() - t1:.3f}s loss {loss.item():.4f}", flush=True)
        return

    def lr_at(s: int) -> float:
        """Warm-up, constant, then a linear decay to 10% over the last --decay fraction of --max-steps."""
        start = (1 - args.decay) * args.max_steps
        tail = 1.0 if s < start else 1.0 - 0.9 * (s - start) / max(1.0, args.max_steps - start)
        return args.lr * min(1.0, (s + 1) / args.warmup) * tail

    deadline = time.monotonic() + args.minutes * 60
    bar = tqdm(total=args.max_steps, initial=step, desc="stdit", dynamic_ncols=True, mininterval=5)
    losses: list[float] = []
    t_last = time.monotonic()
    stop_reason = "max steps"
    while step < args.max_steps:
        if time.monotonic() > deadline:
            stop_reason = "time budget"
            break
        dit.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = loss_on(train_fwd, *batch_at())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.dit.parameters(), dit.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            dt = (time.monotonic() - t_last) / 50
            t_last = time.monotonic()
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", s_step=f"{dt:.2f}")
            log.info("dit step %d loss %.4f grad %.2f %.3fs/step", step, np.mean(losses[-50:]), float(gnorm), dt)
        if step % args.refresh_every == 0:
            slots = pool.refresh_slots(refreshes)
            pool.generation[slots] += 1
            pool.fill(slots, ae, texts, device, args.bf16, stats)
            refreshes += 1
        if step % args.eval_every == 0:
            te = time.monotonic()
            ema.eval()
            with torch.no_grad():
                l_true = loss_on(ema.dit, *probe).item()
                x0, y, m, t, n = probe
                l_wrong = loss_on(ema.dit, x0, y[perm], m[perm], t, n).item()
                l_noframe = loss_on(ema.dit, *probe, frame_conditioning=False).item()
            r = evaluate(ema, judge, prompts, p_states, p_masks, args.eval_steps, 2.0)
            contact_sheet(r.pop("frames"), args.work_dir / f"samples_{step:06d}.png")
            rs = evaluate(ema, judge, prompts, f_states, f_masks, args.eval_steps, 2.0)
            rs.pop("frames")
            r |= {"semantic_motion": rs["motion"], "semantic_color": rs["color"]}
            rec = {
                "step": step,
                "loss": float(np.mean(losses[-200:])),
                "probe_true": l_true,
                "probe_wrong_text": l_wrong,
                "probe_no_frame_cond": l_noframe,
                **r,
            }
            history.append(rec)
            log.info("eval %s (%.1fs)", json.dumps(rec), time.monotonic() - te)
            tqdm.write(
                f"eval step {step}: motion {r['motion']:.0%} colour {r['color']:.0%} "
                f"(fused text: {r['semantic_motion']:.0%} / {r['semantic_color']:.0%}) "
                f"probe true/wrong/no-frame {l_true:.4f}/{l_wrong:.4f}/{l_noframe:.4f}"
            )
            t_last += time.monotonic() - te
        if step % args.ckpt_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    # a last evaluation, with and without the frame-aware modulation
    ema.eval()
    r = evaluate(ema, judge, prompts, p_states, p_masks, args.eval_steps, 2.0)
    contact_sheet(r.pop("frames"), args.work_dir / "samples_final.png")
    r2 = evaluate(ema, judge, prompts, p_states, p_masks, args.eval_steps, 2.0, frame_conditioning=False)
    r2.pop("frames")
    log.info(
        "final (%s) step %d: %s | without frame conditioning: %s", stop_reason, step, json.dumps(r), json.dumps(r2)
    )
    (args.work_dir / "history.json").write_text(
        json.dumps({"history": history, "final": r, "final_no_frame_cond": r2, "step": step}, indent=1)
    )
    print(
        f"done: step {step} ({stop_reason}); final motion {r['motion']:.0%} colour {r['color']:.0%}; "
        f"exported to {args.export_dir}"
    )


if __name__ == "__main__":
    main()
