"""How much of the product's colour and motion survives the video model's autoencoder alone.

Ground-truth procedural clips of the trained motions go through encode -> decode of a model directory's
autoencoder (no diffusion), and the training-free judges label the original and the reconstruction. A
colour the judge reads right on the original but wrong on the reconstruction was lost by the autoencoder,
so no diffusion model on its latents can get it back. Also PSNR, and per colour where the losses are.

    python bench/autoencoder_fidelity.py --clips 210
    python bench/autoencoder_fidelity.py --model-dir path/to/other/weights
"""

from __future__ import annotations

import argparse
import os
import platform
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from kdcvg.app import BUNDLED_MODEL
from kdcvg.data import make_creative
from kdcvg.judge import dominant_foreground_colour, judge_motion
from kdcvg.models.video_model import VideoModel

TRAINED = ("rotate", "zoom_in", "zoom_out", "slide_left", "slide_right", "bounce", "float")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=210, help="spread evenly over the trained motions")
    parser.add_argument("--seed", type=int, default=20_000, help="first seed (held out from training)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    model = VideoModel.load(args.model_dir or BUNDLED_MODEL)

    per = max(1, args.clips // len(TRAINED))
    rows = []
    for i, motion in enumerate(TRAINED):
        for k in range(per):
            c = make_creative(args.seed + i * 1000 + k, motions=[motion], frames=model.frames, size=model.height)
            recon = model.decode(model.encode(c.frames[None]))[0].numpy()
            err = c.frames.astype(np.float32) - recon.astype(np.float32)
            psnr = 10 * np.log10(255.0**2 / max(1e-9, float((err**2).mean())))
            rows.append(
                (
                    motion,
                    c.spec.color,
                    dominant_foreground_colour(c.frames)[0],
                    dominant_foreground_colour(recon)[0],
                    judge_motion(c.frames).label,
                    judge_motion(recon).label,
                    psnr,
                )
            )
    n = len(rows)
    col_gt = sum(r[2] == r[1] for r in rows)
    col_rec = sum(r[3] == r[1] for r in rows)
    lost = sum(r[2] == r[1] and r[3] != r[1] for r in rows)
    mot_gt = sum(r[4] == r[0] for r in rows)
    mot_rec = sum(r[5] == r[0] for r in rows)
    print(
        f"# {datetime.now(UTC):%Y-%m-%d}, {platform.machine()} {os.cpu_count()} cores, "
        f"model {model.frames}x{model.height}"
    )
    print(
        "| clips | colour right: original | colour right: reconstruction | lost by the autoencoder |"
        " motion right: original | motion right: reconstruction | PSNR dB (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {n} | {col_gt / n:.3f} | {col_rec / n:.3f} | {lost / n:.3f} | {mot_gt / n:.3f} | {mot_rec / n:.3f} |"
        f" {np.median([r[6] for r in rows]):.1f} |"
    )
    misses = Counter((r[1], r[3]) for r in rows if r[3] != r[1])
    print(
        "colour misses on reconstructions (asked -> read):",
        ", ".join(f"{a}->{b} x{c}" for (a, b), c in misses.most_common(12)),
    )


if __name__ == "__main__":
    main()
