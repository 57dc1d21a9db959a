"""The shipped reward model (weights/reward-tiny) on held-out preference pairs, and its scoring speed.

For each pair type (`motion`: same product, another motion; `product`: same motion, another colour and/or
shape; `corrupt`: the clip itself corrupted) N pairs are built from creatives the model never saw in
training (seeds from 2,000,000; training used seeds below 2,000 and watched 1,000,000..1,000,149), and a pair
counts as right when the chosen clip scores above the rejected one for the text. Breakdowns follow per
text kind, per motion of the chosen clip (motion pairs), per kind of product change and per corruption.

    python bench/reward_accuracy.py                        # 200 pairs per type, fp32 text vectors
    python bench/reward_accuracy.py --pairs 500 --precision int8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from kdcvg.data import creatives as cr
from kdcvg.scoring.reward import PAIR_TYPES, TEXT_KINDS, count_parameters, load_reward_model, preference_pair
from kdcvg.text.encoder import TextEncoder

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def product_change(seed: int, detail: str) -> str:
    spec = cr.sample_spec(seed)
    color, shape = detail.split(" ", 1)
    if color != spec.color and shape != spec.shape:
        return "colour+shape"
    return "colour" if color != spec.color else "shape"


def table(title: str, rows: dict[str, list[bool]]) -> None:
    print(f"  {title}")
    for name, oks in rows.items():
        print(f"    {name:<14} {sum(oks):>4}/{len(oks):<4} {np.mean(oks):7.1%}")


def throughput(model, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """(clips/s, ms per call) scoring uint8 (batch, 16, 64, 64, 3) clips against one text, preprocessing included."""
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (batch, 16, 64, 64, 3), dtype=np.uint8)
    text = rng.normal(size=(1, 384)).astype(np.float32)
    with torch.inference_mode():
        for _ in range(3):
            model.score(clips, text)
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model.score(clips, text)
            calls += 1
        dt = time.perf_counter() - t0
    return calls * batch / dt, 1000 * dt / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200, help="held-out pairs per type")
    parser.add_argument("--seed", type=int, default=2_000_000, help="first creative seed")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="text encoder precision")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--weights", type=Path, default=None, help="model dir (default: the shipped reward-tiny)")
    parser.add_argument("--encoder-cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model = load_reward_model(args.weights)
    encoder = TextEncoder.load(args.encoder_cache, precision=args.precision, threads=args.threads)
    print(
        f"reward-tiny ({count_parameters(model):,} parameters): pairwise accuracy on {args.pairs} held-out pairs per "
        f"type, seeds {args.seed}..{args.seed + args.pairs - 1}, text vectors {args.precision}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s)"
    )
    print()

    results: dict[str, list[bool]] = {}
    margins: dict[str, list[float]] = {}
    by_text: dict[str, list[bool]] = defaultdict(list)
    by_detail: dict[str, dict[str, list[bool]]] = {k: defaultdict(list) for k in PAIR_TYPES}
    t_build = 0.0
    for kind in PAIR_TYPES:
        t0 = time.perf_counter()
        pairs = [preference_pair(args.seed + i, kind) for i in range(args.pairs)]
        texts = encoder.encode([p.text for p in pairs])
        t_build += time.perf_counter() - t0
        with torch.inference_mode():
            sc = torch.cat([model.score(np.stack([p.chosen for p in pairs[i : i + 32]]), texts[i : i + 32])
                            for i in range(0, len(pairs), 32)])  # fmt: skip
            sr = torch.cat([model.score(np.stack([p.rejected for p in pairs[i : i + 32]]), texts[i : i + 32])
                            for i in range(0, len(pairs), 32)])  # fmt: skip
        ok = (sc > sr).tolist()
        results[kind], margins[kind] = ok, (sc - sr).tolist()
        for p, good in zip(pairs, ok, strict=True):
            by_text[p.text_kind].append(good)
            if kind == "motion":
                by_detail[kind][cr.sample_spec(p.seed).motion].append(good)
            elif kind == "product":
                by_detail[kind][product_change(p.seed, p.detail)].append(good)
            else:
                by_detail[kind][p.detail].append(good)

    print(f"{'pair type':<14} {'right':>9} {'accuracy':>9} {'mean margin':>12}  (margin: cos chosen - cos rejected)")
    for kind in PAIR_TYPES:
        ok = results[kind]
        print(f"{kind:<14} {sum(ok):>4}/{len(ok):<4} {np.mean(ok):9.1%} {np.mean(margins[kind]):12.3f}")
    every = [x for k in PAIR_TYPES for x in results[k]]
    print(f"{'overall':<14} {sum(every):>4}/{len(every):<4} {np.mean(every):9.1%}")
    print()
    table("motion pairs, by the chosen clip's motion:", dict(sorted(by_detail["motion"].items())))
    table("product pairs, by what changed:", dict(sorted(by_detail["product"].items())))
    table("corrupt pairs, by corruption:", dict(sorted(by_detail["corrupt"].items())))
    table("all pairs, by text kind:", {k: by_text[k] for k in TEXT_KINDS if by_text[k]})
    print()
    print(f"pair building (render + corrupt + text vectors): {1000 * t_build / (3 * args.pairs):.1f} ms per pair")
    for batch in (1, 16):
        cps, ms = throughput(model, batch)
        print(
            f"scoring, batch {batch:>2}: {cps:7.1f} clips/s, {16 * cps:8.0f} frames/s ({ms:.1f} ms per call, 16x64x64 "
            f"uint8 clips, preprocessing included, {args.threads} thread(s))"
        )


if __name__ == "__main__":
    main()
