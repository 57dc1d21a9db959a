#!/usr/bin/env python
"""Train the reward-tiny reward model (CleveReward-style, `kdcvg.scoring.reward`) on procedural preference pairs.

    python scripts/train_reward_model.py --threads 2                      # the shipped run (~20 min, 2 cores)
    python scripts/train_reward_model.py --resume --threads 1 --minutes 10   # continues exactly where it stopped

1. A pool of training creatives (seeds 0..--pool-1) is rendered once and cached as .npy under --work-dir:
   each clip, --alt renders of it with another motion and --alt with another colour and/or shape; with the
   sentence vectors (fp32 and int8 all-MiniLM-L6-v2, frozen) of its four texts (caption, request, short
   prompt, selling points).
2. Every step takes --anchors creatives; for each, one text (the points-only text at --points-prob, it
   names no product) and four clips: the chosen clip, one wrong-motion render, one wrong-product render
   and one corruption of the chosen clip (`kdcvg.scoring.reward.CORRUPTIONS`, drawn anew every step). With
   probability --mild the anchor's four clips share a mild blur and noise, so that a clean look alone is
   not what makes a clip chosen. The loss is the Bradley-Terry loss -log sigmoid(s * (cos_chosen -
   cos_rejected)) over the three hard pairs of each anchor plus, weighted by --in-batch, over every clip of
   the other anchors that does not fit the text (another motion, or another product for a text that names
   one); s = exp(logit_scale) is learned.
3. Held-out pairs come from seeds 1,000,000+ (`preference_pair`), never seen in training; their pairwise
   accuracy per pair type is printed every --eval-every steps and at the end.

The step's data is a function of (--seed, step) only, so a resumed run continues exactly. A checkpoint
(model, optimiser, step) goes to --work-dir every --ckpt-every steps and when --minutes runs out, and the
weights are exported to --export-dir (config.json + model.safetensors) each time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

from kdcvg.data import creatives as cr  # noqa: E402
from kdcvg.models.checkpoint import save_checkpoint  # noqa: E402
from kdcvg.scoring import reward as rw  # noqa: E402

POOL_VERSION = 2
EVAL_SEED_BASE = 1_000_000
TEXT_PROBS = {"caption": 0.3, "request": 0.3, "short": 0.25, "points": 0.15}


# ------------------------------------------------------------------------------------------------------
# data


def load_encoders(cache: Path, threads: int | None) -> dict:
    """The fp32 and int8 all-MiniLM-L6-v2 encoders of the project."""
    from kdcvg.text.encoder import TextEncoder

    return {p: TextEncoder.load(cache, precision=p, threads=threads) for p in ("fp32", "int8")}


def build_pool(directory: Path, n: int, alt: int, encoders: dict) -> None:
    """Render the training pool into `directory` (written in a temporary folder, then renamed)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shape = (16, 64, 64, 3)
    chosen = np.lib.format.open_memmap(tmp / "chosen.npy", "w+", np.uint8, (n, *shape))
    motion = np.lib.format.open_memmap(tmp / "motion.npy", "w+", np.uint8, (n, alt, *shape))
    product = np.lib.format.open_memmap(tmp / "product.npy", "w+", np.uint8, (n, alt, *shape))
    meta, texts = [], []
    for seed in tqdm(range(n), desc="pool", dynamic_ncols=True, mininterval=5):
        c = cr.make_creative(seed)
        rng = np.random.default_rng([seed, 11])
        chosen[seed] = c.frames
        m_specs = []
        others = [m for m in cr.MOTIONS if m != c.motion]
        for j, k in enumerate(rng.choice(len(others), size=alt, replace=False)):
            spec = dataclasses.replace(c.spec, motion=others[int(k)])
            motion[seed, j] = cr.render(spec)
            m_specs.append(spec.motion)
        p_specs = []
        for j in range(alt):
            spec = rw.with_product(c.spec, rng)
            product[seed, j] = cr.render(spec)
            p_specs.append([spec.color, spec.shape])
        t = rw.clip_texts(c)
        texts.extend(t[k] for k in rw.TEXT_KINDS)
        meta.append(
            {"motion": c.motion, "color": c.spec.color, "shape": c.spec.shape, "alt_motion": m_specs,
             "alt_product": p_specs, "texts": t}
        )  # fmt: skip
    for m in (chosen, motion, product):
        m.flush()
    del chosen, motion, product
    for precision, enc in encoders.items():
        emb = np.concatenate([enc.encode(texts[i : i + 512]) for i in tqdm(range(0, len(texts), 512), desc=precision)])
        np.save(tmp / f"text_{precision}.npy", emb.reshape(n, len(rw.TEXT_KINDS), -1).astype(np.float32))
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


class Pool:
    """The cached training pool, memory-mapped."""

    def __init__(self, directory: Path) -> None:
        self.chosen = np.load(directory / "chosen.npy", mmap_mode="r")
        self.motion = np.load(directory / "motion.npy", mmap_mode="r")
        self.product = np.load(directory / "product.npy", mmap_mode="r")
        self.text = {p: np.load(directory / f"text_{p}.npy") for p in ("fp32", "int8")}
        self.meta = json.loads((directory / "meta.json").read_text())
        self.n, self.alt = self.motion.shape[:2]


def mild(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light blur and noise, the look of a generated clip, with fixed parameters drawn from `rng`."""
    sigma, noise = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.0, 5.0))
    seed = int(rng.integers(1 << 31))
    out = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]).astype(np.float32)
    out += np.random.default_rng(seed).normal(0.0, noise, out.shape)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def make_batch(pool: Pool, step: int, args: argparse.Namespace) -> dict:
    """The data of one step: a function of (args.seed, step) only."""
    rng = np.random.default_rng([args.seed, step])
    seeds = rng.choice(pool.n, size=args.anchors, replace=False)
    kinds, probs = list(TEXT_PROBS), np.array(list(TEXT_PROBS.values()))
    clips, attrs, texts, points_only = [], [], [], []
    for s in seeds:
        m = pool.meta[s]
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        precision = "int8" if rng.random() < 0.5 else "fp32"
        texts.append(pool.text[precision][s, rw.TEXT_KINDS.index(kind)])
        points_only.append(kind == "points")
        jm, jp = int(rng.integers(pool.alt)), int(rng.integers(pool.alt))
        chosen = np.asarray(pool.chosen[s])
        group = [chosen, np.asarray(pool.motion[s, jm]), np.asarray(pool.product[s, jp])]
        corruption = rw.CORRUPTIONS[int(rng.integers(len(rw.CORRUPTIONS)))]
        if rng.random() < args.mild:
            shared = np.random.default_rng(int(rng.integers(1 << 31)))
            state = shared.bit_generator.state
            degraded = []
            for g in group:
                shared.bit_generator.state = state  # the same blur and noise level on all four
                degraded.append(mild(g, shared))
            group = degraded
        group.append(rw.corrupt_clip(group[0], corruption, rng))
        clips.extend(group)
        color, shape = m["color"], m["shape"]
        attrs.extend(
            [
                (m["motion"], color, shape, False),
                (m["alt_motion"][jm], color, shape, False),
                (m["motion"], *m["alt_product"][jp], False),
                (m["motion"], color, shape, True),  # corrupted: always worse than a clean match
            ]
        )
    # fits[i, j]: clip j would be a fair match for text i (same motion, and same product unless the text
    # names none); such pairs are left out of the in-batch loss.
    n_clips = len(clips)
    fits = np.zeros((args.anchors, n_clips), bool)
    for i, s in enumerate(seeds):
        m = pool.meta[s]
        for j, (motion, color, shape, corrupted) in enumerate(attrs):
            same_product = color == m["color"] and shape == m["shape"]
            fits[i, j] = not corrupted and motion == m["motion"] and (points_only[i] or same_product)
    return {
        "clips": torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous(),
        "text": torch.from_numpy(np.stack(texts)),
        "points_only": torch.tensor(points_only),
        "fits": torch.from_numpy(fits),
    }


def build_eval(path: Path, n: int, encoder) -> None:  # noqa: ANN001
    """`n` held-out pairs per type (seeds EVAL_SEED_BASE..), with their texts' fp32 sentence vectors."""
    data: dict[str, np.ndarray] = {}
    for kind in rw.PAIR_TYPES:
        pairs = [rw.preference_pair(EVAL_SEED_BASE + i, kind) for i in tqdm(range(n), desc=f"eval {kind}")]
        data[f"{kind}_chosen"] = np.stack([p.chosen for p in pairs])
        data[f"{kind}_rejected"] = np.stack([p.rejected for p in pairs])
        data[f"{kind}_text"] = encoder.encode([p.text for p in pairs])
        data[f"{kind}_detail"] = np.array([p.detail for p in pairs])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)


@torch.inference_mode()
def evaluate(model: rw.RewardModel, ev: dict) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected) per pair type and overall."""
    model.eval()
    acc, total, right = {}, 0, 0
    for kind in rw.PAIR_TYPES:
        text = ev[f"{kind}_text"]
        sc = torch.cat(
            [model.score(ev[f"{kind}_chosen"][i : i + 64], text[i : i + 64]) for i in range(0, len(text), 64)]
        )
        sr = torch.cat(
            [model.score(ev[f"{kind}_rejected"][i : i + 64], text[i : i + 64]) for i in range(0, len(text), 64)]
        )
        ok = int((sc > sr).sum())
        acc[kind] = ok / len(text)
        total, right = total + len(text), right + ok
    acc["overall"] = right / total
    model.train()
    return acc


# ------------------------------------------------------------------------------------------------------
# training


def loss_fn(model: rw.RewardModel, batch: dict, args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss on the hard pairs and (weighted) on in-batch negatives."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        v = model.video(batch["clips"])
    v = F.normalize(v.float(), dim=-1)
    t = F.normalize(model.text(batch["text"]), dim=-1)
    sims = t @ v.T  # (A, 4A)
    a = sims.shape[0]
    idx = torch.arange(a)
    pos = sims[idx, 4 * idx]  # (A,)
    scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
    hard = torch.stack([sims[idx, 4 * idx + k] for k in (1, 2, 3)], dim=1)  # (A, 3): motion, product, corrupt
    hard_mask = torch.ones_like(hard, dtype=torch.bool)
    hard_mask[:, 1] = ~batch["points_only"]
    hard_loss = F.softplus(-scale * (pos[:, None] - hard))[hard_mask].mean()
    own = torch.zeros_like(batch["fits"])
    for k in range(4):
        own[idx, 4 * idx + k] = True
    neg = ~batch["fits"] & ~own
    batch_loss = F.softplus(-scale * (pos[:, None] - sims))[neg].mean()
    loss = hard_loss + args.in_batch * batch_loss
    with torch.no_grad():
        acc = (pos[:, None] > hard)[hard_mask].float().mean().item()
    return loss, {"hard": hard_loss.item(), "batch": batch_loss.item(), "acc": acc, "scale": scale.item()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "train" / "reward")
    p.add_argument("--export-dir", type=Path, default=rw.WEIGHTS_DIR)
    p.add_argument("--encoder-cache", type=Path, default=ROOT / ".cache" / "models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    p.add_argument("--minutes", type=float, default=25.0, help="wall budget for this invocation's training")
    p.add_argument("--max-steps", type=int, default=2000, help="sets the lr schedule; --minutes may stop earlier")
    p.add_argument("--pool", type=int, default=2000, help="training creatives (seeds 0..pool-1)")
    p.add_argument("--alt", type=int, default=2, help="wrong-motion and wrong-product renders per creative")
    p.add_argument("--eval-pairs", type=int, default=150, help="held-out pairs per type")
    p.add_argument("--anchors", type=int, default=8, help="creatives per step (4 clips each)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--in-batch", type=float, default=0.5, help="weight of the in-batch negatives' loss")
    p.add_argument("--mild", type=float, default=0.3, help="probability of a shared mild degradation")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (AMX)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    t_start = time.monotonic()
    ckpt_path = args.work_dir / "reward.pt"
    log = (args.work_dir / "train.log").open("a")

    def note(msg: str) -> None:
        tqdm.write(msg)
        log.write(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} {msg}\n")
        log.flush()

    note(f"start {' '.join(sys.argv)}; machine {platform.machine()}, {os.cpu_count()} cores")
    pool_dir = args.work_dir / f"pool-{args.pool}x{args.alt}-v{POOL_VERSION}"
    eval_path = args.work_dir / f"eval-{args.eval_pairs}-v{POOL_VERSION}.npz"
    if not (pool_dir / "meta.json").is_file() or not eval_path.is_file():
        encoders = load_encoders(args.encoder_cache, args.threads or None)
        if not (pool_dir / "meta.json").is_file():
            t0 = time.monotonic()
            build_pool(pool_dir, args.pool, args.alt, encoders)
            note(f"pool of {args.pool} creatives built in {time.monotonic() - t0:.0f} s")
        if not eval_path.is_file():
            build_eval(eval_path, args.eval_pairs, encoders["fp32"])
        del encoders
    pool = Pool(pool_dir)
    ev = dict(np.load(eval_path))

    model = rw.RewardModel(rw.RewardConfig())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=args.lr
    )
    step, history = 0, []
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        note(f"resumed at step {step}")
    elif ckpt_path.is_file():
        note(f"starting over (the old checkpoint {ckpt_path} will be replaced; --resume continues it)")
    note(f"model: {rw.count_parameters(model):,} parameters ({rw.count_parameters(model.video):,} video)")

    def lr_at(s: int) -> float:
        warm = min(1.0, (s + 1) / args.warmup)
        return args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.max_steps))))

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
             "config": model.config.to_dict(), "args": {k: str(v) for k, v in vars(args).items()}},
        )  # fmt: skip
        model.save(args.export_dir)

    deadline = time.monotonic() + args.minutes * 60
    bar = tqdm(total=args.max_steps, initial=step, desc="reward", dynamic_ncols=True, mininterval=5)
    model.train()
    recent: list[dict[str, float]] = []
    t_train = time.monotonic()
    while step < args.max_steps and time.monotonic() < deadline:
        batch = make_batch(pool, step, args)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, stats = loss_fn(model, batch, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        recent.append({"loss": loss.item(), **stats})
        bar.update(1)
        if step % 20 == 0:
            mean = {k: float(np.mean([r[k] for r in recent])) for k in recent[0]}
            bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['acc']:.2f}", s=f"{mean['scale']:.1f}")
            history.append({"step": step, **mean})
            recent = []
        if step % args.eval_every == 0:
            acc = evaluate(model, ev)
            note(f"step {step}: held-out " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
        if step % args.ckpt_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    elapsed = time.monotonic() - t_train
    acc = evaluate(model, ev)
    note(
        f"stopped at step {step}/{args.max_steps} after {elapsed / 60:.1f} min of training "
        f"({time.monotonic() - t_start:.0f} s in all); weights in {args.export_dir}"
    )
    n = args.eval_pairs
    note(
        f"held-out pairwise accuracy ({n} pairs per type, seeds {EVAL_SEED_BASE}..{EVAL_SEED_BASE + n - 1}): "
        + ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
    )


if __name__ == "__main__":
    main()
