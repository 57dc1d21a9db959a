"""Where a sampler step's time goes: torch.profiler over DiT forwards of the CFG batch, grouped by operator.

    python bench/profile_step.py [--rows 32] [--steps 5]

On CPU this profiles the shipped kdcvg-tiny model (bf16 weights run as they are served); on CUDA it also
shows the kernels' share. Prints the top operators by self time.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from torch.profiler import ProfilerActivity, profile

from kdcvg.app import BUNDLED_MODEL
from kdcvg.models.video_model import VideoModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="rows of the forward pass (2 per guided request)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = VideoModel.load(BUNDLED_MODEL).eval()
    dit, cfg = model.dit, model.dit.config
    p = next(dit.parameters())
    x = torch.randn(args.rows, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width).to(p)
    t = torch.rand(args.rows, device=p.device)
    y = torch.randn(args.rows, 32, cfg.text_dim).to(p)
    mask = torch.ones(args.rows, 32, dtype=torch.bool, device=p.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if p.is_cuda else [])
    with torch.inference_mode():
        dit(x, t, y, mask)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                dit(x, t, y, mask)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; {p.device} {p.dtype}; "
        f"{args.rows} rows x {cfg.num_tokens} tokens, d {cfg.hidden}, {args.steps} forwards"
    )
    key = "self_cuda_time_total" if p.is_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    main()
