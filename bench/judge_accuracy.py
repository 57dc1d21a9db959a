"""The training-free judges on ground-truth procedural clips: motion accuracy per motion with the confusion
matrix, product-colour accuracy per colour, and speed. The baseline is the clean ground truth; `--degrade`
adds what generated clips suffer (blur and noise; then also an H.264 round trip) to see what breaks first.

    python bench/judge_accuracy.py                      # 500 clips, 16 frames at 64x64
    python bench/judge_accuracy.py --degrade blur       # blurred (sigma 1 px) and noisy
    python bench/judge_accuracy.py --degrade h264       # blurred, noisy, jittered, H.264 at CRF 30
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from datetime import UTC, datetime

import cv2
import numpy as np

from kdcvg.data import make_creative
from kdcvg.data.creatives import COLORS, MOTIONS
from kdcvg.judge import LABELS, dominant_foreground_colour, judge_motion
from kdcvg.media import decode_video, encode_mp4


def degrade(frames: np.ndarray, seed: int, kind: str) -> np.ndarray:
    """What a generated clip looks like, roughly: blur, pixel and frame noise, (h264) sub-pixel jitter + codec."""
    if kind == "none":
        return frames
    rng = np.random.default_rng(seed)
    out = []
    for f in frames.astype(np.float32):
        f = cv2.GaussianBlur(f, (0, 0), 1.0) + rng.normal(0, 5, f.shape) + rng.normal(0, 3)
        if kind == "h264":
            shift = np.float32([[1, 0, rng.normal(0, 0.3)], [0, 1, rng.normal(0, 0.3)]])
            f = cv2.warpAffine(f, shift, (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    clip = np.stack(out)
    if kind == "h264":
        clip = decode_video(encode_mp4(clip, crf=30)).frames
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=500, help="clips in all, spread evenly over the motions")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=10_000, help="first seed (the tests use seeds below 3,000)")
    parser.add_argument("--degrade", choices=("none", "blur", "h264"), default="none")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per-clip work is small; one thread per clip is the honest speed figure

    per_motion = max(1, args.clips // len(MOTIONS))
    truth, judged, colour_truth, colour_judged = [], [], [], []
    t_motion = t_colour = 0.0
    for i, motion in enumerate(MOTIONS):
        for k in range(per_motion):
            seed = args.seed + i * per_motion + k
            c = make_creative(seed, motions=[motion], frames=args.frames, size=args.size)
            frames = degrade(c.frames, seed, args.degrade)
            t0 = time.perf_counter()
            verdict = judge_motion(frames)
            t1 = time.perf_counter()
            name, _ = dominant_foreground_colour(frames)
            t2 = time.perf_counter()
            t_motion += t1 - t0
            t_colour += t2 - t1
            truth.append(motion)
            judged.append(verdict.label)
            colour_truth.append(c.spec.color)
            colour_judged.append(name)
    n = len(truth)

    print(
        f"judge accuracy: {n} ground-truth clips ({per_motion} per motion, all categories), {args.frames} frames "
        f"at {args.size}x{args.size}, degrade={args.degrade}, seeds {args.seed}..{args.seed + n - 1}"
    )
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} cores, 1 thread"
    )
    print()
    ok = sum(t == j for t, j in zip(truth, judged, strict=True))
    print(f"motion: {ok}/{n} = {ok / n:.1%}")
    for m in MOTIONS:
        idx = [i for i, t in enumerate(truth) if t == m]
        right = sum(judged[i] == m for i in idx)
        wrong = Counter(judged[i] for i in idx if judged[i] != m)
        extra = ", ".join(f"{lab} {c}" for lab, c in wrong.most_common()) if wrong else ""
        print(f"  {m:<12} {right:>3}/{len(idx):<3} {right / len(idx):6.1%}  {extra}")
    print()
    print("confusion (rows: true motion, columns: judged label)")
    print(" " * 12 + " ".join(f"{lab[:6]:>6}" for lab in LABELS))
    for m in MOTIONS:
        counts = [sum(1 for t, j in zip(truth, judged, strict=True) if t == m and j == lab) for lab in LABELS]
        print(f"{m:>11} " + " ".join(f"{c:6d}" for c in counts))
    print()
    ok = sum(t == j for t, j in zip(colour_truth, colour_judged, strict=True))
    print(f"colour: {ok}/{n} = {ok / n:.1%}")
    for name in COLORS:
        idx = [i for i, t in enumerate(colour_truth) if t == name]
        if not idx:
            continue
        right = sum(colour_judged[i] == name for i in idx)
        wrong = Counter(colour_judged[i] for i in idx if colour_judged[i] != name)
        extra = ", ".join(f"{lab} {c}" for lab, c in wrong.most_common()) if wrong else ""
        print(f"  {name:<8} {right:>3}/{len(idx):<3} {right / len(idx):6.1%}  {extra}")
    print()
    print(
        f"speed (judging only, rendering excluded): motion {n / t_motion:.1f} clips/s "
        f"({1000 * t_motion / n:.1f} ms/clip, {1000 * t_motion / n / (args.frames - 1):.2f} ms per frame pair); "
        f"colour {n / t_colour:.1f} clips/s ({1000 * t_colour / n:.1f} ms/clip)"
    )


if __name__ == "__main__":
    main()
