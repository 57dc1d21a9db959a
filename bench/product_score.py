"""ProductScore validation on procedural creatives: does it rank the unchanged product above altered ones?

For each creative, the reference image is the product alone, at rest, on a plain background (the spec's
own, or with --ref-background other a contrasting white/charcoal one), rendered at --ref-size. The clips:

    unchanged   the creative itself
    recoloured  the same spec with another palette colour (one that still contrasts with the background)
    reshaped    the same spec with another product shape (deformed: a different silhouette)
    squashed    the creative with its product squashed to --squash of its width, per frame about its centre
    other       another shape in another colour (a different product entirely)

With --degrade every clip (not the reference) is blurred and noised as generated clips are, and with
"h264" also jittered and sent through H.264 at CRF 30. It prints the share of creatives where unchanged
scores above each alteration, each variant's mean score and components, and the metric's speed: per
frame over all scored clips (product detection included) and per reference, one OpenCV thread, as wall
time and as this process's CPU time (the honest figure when other jobs share the cores).

    python bench/product_score.py                          # 60 creatives, 16 frames at 64x64
    python bench/product_score.py --ref-background other   # the reference on a different background
    python bench/product_score.py --degrade h264           # blurred, noisy, jittered clips through H.264
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time

import cv2
import numpy as np
from judge_accuracy import degrade  # the same "looks generated" degradation as the judges' bench

from kdcvg.data.creatives import COLORS, SHAPES, Background, CreativeSpec, render, sample_spec
from kdcvg.judge import product_masks
from kdcvg.scoring.product import ProductReference, product_score

VARIANTS = ("unchanged", "recoloured", "reshaped", "squashed", "other")
_MIN_CONTRAST = 130.0  # RGB distance a product colour keeps from the background (as the creatives' sampler)


def reference_image(spec: CreativeSpec, size: int, background: str) -> np.ndarray:
    """The product alone, upright at rest (the first frame of a 'float'), on a plain background."""
    ref = dataclasses.replace(spec, motion="float", overlay=None, frames=8, height=size, width=size)
    if background == "other":
        luma = 0.299 * spec.rgb[0] + 0.587 * spec.rgb[1] + 0.114 * spec.rgb[2]
        name, rgb = ("white", (246, 246, 246)) if luma < 140 else ("charcoal", (45, 46, 52))
        ref = dataclasses.replace(ref, background=Background("plain", name, rgb, rgb))
    return render(ref)[0]


def _contrasts(rgb: tuple[int, int, int], bg: Background) -> bool:
    return min(math.dist(rgb, bg.rgb), math.dist(rgb, bg.rgb_end)) >= _MIN_CONTRAST


def recoloured(spec: CreativeSpec, rng: np.random.Generator) -> CreativeSpec:
    """The spec with another palette colour that still stands out from its background."""
    names = [n for n in COLORS if n != spec.color and _contrasts(COLORS[n], spec.background)]
    name = names[int(rng.integers(len(names)))]
    return dataclasses.replace(spec, color=name, rgb=COLORS[name])


def reshaped(spec: CreativeSpec, rng: np.random.Generator) -> CreativeSpec:
    """The spec with another product shape (same colour, motion, background and overlay)."""
    shapes = [s for s in SHAPES if s != spec.shape]
    return dataclasses.replace(spec, shape=shapes[int(rng.integers(len(shapes)))])


def squashed(frames: np.ndarray, factor: float) -> np.ndarray:
    """Each frame with its product squashed horizontally to `factor` of its width about its centre.

    The product's region (the clip's product mask, grown by a pixel) is painted over with the background
    (the creatives' backgrounds are constant along rows: read off the frame's outer columns) and the
    resized product is composited back with its resized mask as alpha.
    """
    masks = product_masks(frames)
    out = frames.copy()
    for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        if mask.sum() < 4:
            continue
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rows = np.median(np.concatenate([frame[:, :2], frame[:, -2:]], axis=1), axis=1)  # (H, 3)
        clean = out[t].astype(np.float32)
        clean[grown] = rows[np.nonzero(grown)[0]]
        ys, xs = np.nonzero(grown)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        width = max(1, round((x1 - x0) * factor))
        crop = cv2.resize(frame[y0:y1, x0:x1].astype(np.float32), (width, y1 - y0), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(grown[y0:y1, x0:x1].astype(np.float32), (width, y1 - y0), interpolation=cv2.INTER_AREA)
        nx0 = int(round((x0 + x1) / 2 - width / 2))
        region = clean[y0:y1, nx0 : nx0 + width]
        clean[y0:y1, nx0 : nx0 + width] = alpha[..., None] * crop + (1 - alpha[..., None]) * region
        out[t] = np.clip(clean + 0.5, 0, 255).astype(np.uint8)
    return out


def variants(spec: CreativeSpec, squash: float, kind: str = "none") -> dict[str, np.ndarray]:
    """The five clips of one creative, keyed by VARIANTS, each degraded by `kind`."""
    rng = np.random.default_rng([spec.seed, 7])
    clip = render(spec)
    other = recoloured(reshaped(spec, rng), rng)
    clips = {
        "unchanged": clip,
        "recoloured": render(recoloured(spec, rng)),
        "reshaped": render(reshaped(spec, rng)),
        "squashed": squashed(clip, squash),
        "other": render(other),
    }
    return {name: degrade(c, spec.seed * 8 + i, kind) for i, (name, c) in enumerate(clips.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creatives", type=int, default=60)
    parser.add_argument("--seed", type=int, default=20_000, help="first seed (the tests use seeds below 100)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ref-size", type=int, default=256, help="side of the reference image (px)")
    parser.add_argument("--ref-background", choices=("same", "other"), default="same")
    parser.add_argument("--squash", type=float, default=0.6, help="width factor of the squashed product")
    parser.add_argument("--degrade", choices=("none", "blur", "h264"), default="none")
    parser.add_argument("--verbose", action="store_true", help="print every creative's scores")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per-clip work is small; one thread is the honest per-clip speed figure

    scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
    parts: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    t_ref = t_score = cpu_ref = cpu_score = 0.0
    n_frames = 0
    for i in range(args.creatives):
        spec = sample_spec(args.seed + i, frames=args.frames, size=args.size)
        image = reference_image(spec, args.ref_size, args.ref_background)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = ProductReference.from_image(image)
        t_ref += time.perf_counter() - t0
        cpu_ref += time.process_time() - c0
        row = []
        for name, clip in variants(spec, args.squash, args.degrade).items():
            t0, c0 = time.perf_counter(), time.process_time()
            result = product_score(clip, ref)
            t_score += time.perf_counter() - t0
            cpu_score += time.process_time() - c0
            n_frames += len(clip)
            scores[name].append(result.value)
            parts[name].append(result.components)
            row.append(f"{name} {result.value:.3f}")
        if args.verbose:
            print(f"seed {spec.seed:>6} {spec.shape:>10} {spec.color:>7} {spec.motion:>11}: " + ", ".join(row))

    n = args.creatives
    print(
        f"product score: {n} creatives, {args.frames} frames at {args.size}x{args.size}, reference "
        f"{args.ref_size}px on the {args.ref_background} background, squash {args.squash}, degrade={args.degrade}, "
        f"seeds {args.seed}..{args.seed + n - 1}"
    )
    base = np.array(scores["unchanged"])
    for name in VARIANTS[1:]:
        wins = float(np.mean(base > np.array(scores[name])))
        margin = float(np.mean(base - np.array(scores[name])))
        print(f"  unchanged > {name:<10} {wins:6.1%} of creatives (mean margin {margin:+.3f})")
    print(f"  {'variant':<11} {'score':>6} {'sd':>6} " + " ".join(f"{k:>11}" for k in parts["unchanged"][0]))
    for name in VARIANTS:
        comp = {k: np.mean([p[k] for p in parts[name]]) for k in parts[name][0]}
        s = np.array(scores[name])
        print(f"  {name:<11} {s.mean():6.3f} {s.std():6.3f} " + " ".join(f"{v:11.3f}" for v in comp.values()))
    print(
        f"  speed: {n_frames / t_score:,.0f} frames/s wall ({1e3 * t_score / n_frames:.2f} ms/frame, "
        f"{1e3 * cpu_score / n_frames:.2f} ms CPU) incl. product detection; reference "
        f"{1e3 * t_ref / n:.0f} ms wall ({1e3 * cpu_ref / n:.0f} ms CPU) each at {args.ref_size}px"
    )
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
