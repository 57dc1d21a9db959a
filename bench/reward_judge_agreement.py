"""Does the reward model agree with the motion judge (kdcvg.judge) on generated clips?

The embedded video model generates one clip per prompt (knowledge mode off, every trained motion). For
each clip the judge names a motion, and the reward model names the motion whose text it scores highest
("a red bottle that spins around", one text per motion). Reported:

- label agreement: reward's motion == judge's motion, on generated clips (chance 1/10), and on
  ground-truth procedural clips of the same prompts, where both can be checked against the true motion;
- whether the reward of (clip, its own prompt) separates the clips the judge says show the prompted
  motion from those it says do not (AUC; 0.5 = no signal).

    python bench/reward_judge_agreement.py [--prompts 42] [--steps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).parent))
from video_model import KEY, TRAINED  # noqa: E402

from kdcvg.cli import background_server  # noqa: E402
from kdcvg.config import Settings  # noqa: E402
from kdcvg.data.creatives import MOTIONS, describe, render, sample_spec  # noqa: E402
from kdcvg.judge import judge_motion  # noqa: E402
from kdcvg.media.video import decode_video  # noqa: E402
from kdcvg.scoring.reward import load_reward_model  # noqa: E402
from kdcvg.text.encoder import TextEncoder  # noqa: E402
from kdcvg_client import AsyncKdcvgClient  # noqa: E402

PHRASES = {
    "rotate": "spins around",
    "zoom_in": "zooms in",
    "zoom_out": "zooms out",
    "slide_left": "slides to the left",
    "slide_right": "slides to the right",
    "bounce": "bounces",
    "float": "floats gently",
    "shake": "shakes",
    "orbit": "circles around",
    "pulse": "pulses",
}


def auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


async def generate(port: int, items: list, steps: int, concurrency: int) -> list[np.ndarray]:
    async with AsyncKdcvgClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, spec, points) -> np.ndarray:  # noqa: ANN001
            async with sem:
                video = await client.generate_video(
                    f"{spec.color} {spec.product}",
                    points,
                    category=spec.category,
                    options={"steps": steps, "knowledge_mode": "off", "seed": 1000 + i},
                    timeout=3600,
                )
                return decode_video(video.mp4).frames

        return await asyncio.gather(*(one(i, s, p) for i, (s, p) in enumerate(items)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=42)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=12)
    args = parser.parse_args()
    items = []
    for i in range(args.prompts):
        spec = sample_spec(9_100_000 + i, motions=[TRAINED[i % len(TRAINED)]])
        items.append((spec, describe(spec)[1]))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=0, metrics_port=0, api_keys={KEY: "bench"}, log_level="WARNING")
        with background_server(settings) as running:
            generated = asyncio.run(generate(running.port, items, args.steps, args.concurrency))
        encoder = TextEncoder.load(settings.models_dir, precision="fp32")
    model = load_reward_model()
    truth = [render(spec) for spec, _ in items]

    def reward_label(frames: np.ndarray, spec, points: list[str]) -> tuple[str, float]:  # noqa: ANN001
        """The motion whose text the reward model scores highest, and the reward of the clip's own prompt."""
        texts = [f"a {spec.color} {spec.product} that {PHRASES[m]}" for m in MOTIONS]
        texts.append(f"{spec.color} {spec.product}: " + "; ".join(points))
        with torch.inference_mode():
            video = F.normalize(model.video_embed(frames[None]), dim=-1)
            text = F.normalize(model.text_project(encoder.encode(texts)), dim=-1)
            cos = (text @ video[0]).numpy()
        return MOTIONS[int(np.argmax(cos[:-1]))], float(cos[-1])

    rows = {"generated": generated, "ground truth": truth}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(items)} prompts over {len(TRAINED)} trained "
        f"motions, {args.steps} sampler steps, knowledge mode off"
    )
    print("| clips | judge = prompt | reward = prompt | reward = judge | AUC of reward(own prompt) vs judge |")
    print("| --- | --- | --- | --- | --- |")
    for name, clips in rows.items():
        judge_ok, reward_ok, agree, pos, neg = [], [], [], [], []
        for (spec, points), frames in zip(items, clips, strict=True):
            j = judge_motion(frames).label
            r, own = reward_label(frames, spec, points)
            judge_ok.append(j == spec.motion)
            reward_ok.append(r == spec.motion)
            agree.append(r == j)
            (pos if j == spec.motion else neg).append(own)
        print(
            f"| {name} | {np.mean(judge_ok):.2f} | {np.mean(reward_ok):.2f} | {np.mean(agree):.2f} | "
            f"{auc(pos, neg):.2f} ({len(pos)} right / {len(neg)} wrong) |"
        )


if __name__ == "__main__":
    main()
