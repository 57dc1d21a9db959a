"""Does the reward model agree with the motion judge (kdcvg.judge) on generated clips?

The embedded video model generates one clip per prompt (knowledge mode off, every trained motion). For
each clip the judge names a motion, and the reward model names the motion whose text it scores highest
(the creative's caption re-described with each motion: one text per motion). Reported:

- label agreement: reward's motion == judge's motion, on generated clips (chance 1/10), and on
  ground-truth procedural clips of the same prompts, where both can be checked against the true motion;
- pairwise: for the motion the judge names, how often the reward scores that motion's caption above each
  other motion's caption of the same product (0.5 = no signal).

    python bench/reward_judge_agreement.py [--prompts 42] [--steps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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

    def reward_view(frames: np.ndarray, spec) -> np.ndarray:  # noqa: ANN001
        """Cosine of the clip with the caption of the same creative in each motion (the captions name it)."""
        texts = [describe(dataclasses.replace(spec, motion=m))[0] for m in MOTIONS]
        with torch.inference_mode():
            video = F.normalize(model.video_embed(frames[None]), dim=-1)
            text = F.normalize(model.text_project(encoder.encode(texts)), dim=-1)
            return (text @ video[0]).numpy()

    rows = {"generated": generated, "ground truth": truth}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(items)} prompts over {len(TRAINED)} trained "
        f"motions, {args.steps} sampler steps, knowledge mode off"
    )
    print("| clips | judge = prompt | reward = prompt | reward = judge | pairwise: reward prefers the judge's motion |")
    print("| --- | --- | --- | --- | --- |")
    for name, clips in rows.items():
        judge_ok, reward_ok, agree, pairwise = [], [], [], []
        for (spec, _), frames in zip(items, clips, strict=True):
            j = judge_motion(frames).label
            cos = reward_view(frames, spec)
            r = MOTIONS[int(np.argmax(cos))]
            judge_ok.append(j == spec.motion)
            reward_ok.append(r == spec.motion)
            agree.append(r == j)
            if j in MOTIONS:
                ji = MOTIONS.index(j)
                pairwise.extend(cos[ji] > cos[k] for k in range(len(MOTIONS)) if k != ji)
        print(
            f"| {name} | {np.mean(judge_ok):.2f} | {np.mean(reward_ok):.2f} | {np.mean(agree):.2f} | "
            f"{np.mean(pairwise):.3f} |"
        )


if __name__ == "__main__":
    main()
