"""The shipped video model judged by numbers: motion and colour accuracy on held-out prompts, `off` vs
`semantic`, and the time per stage of one default clip.

Held-out prompts are procedural creatives of the trained motions (seeds the training never drew), sent as a
Generate request would be: product "<colour> <product>", the creative's selling points, its category. The
sample knowledge base is ingested first so `semantic` has references. Each clip goes through the real
server (gRPC, batched sampler, MP4) and is judged after decoding: the motion judge's label against the
prompt's motion, the dominant foreground colour against the prompt's colour.

    python bench/video_model.py --prompts 60 --steps 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from kdcvg.cli import SAMPLE_DIR, background_server, ingest_directory, save_generation  # noqa: E402
from kdcvg.config import Settings  # noqa: E402
from kdcvg.data.creatives import describe, sample_spec  # noqa: E402
from kdcvg.judge import colour_matches, judge_motion  # noqa: E402
from kdcvg.media.contact_sheet import contact_sheet, write_png  # noqa: E402
from kdcvg.media.video import decode_video  # noqa: E402
from kdcvg_client import AsyncKdcvgClient, KdcvgClient  # noqa: E402

TRAINED = ("rotate", "zoom_in", "zoom_out", "slide_left", "slide_right", "bounce", "float")
KEY = "bench-key"


def prompts(n: int, seed0: int = 9_000_000) -> list:
    out = []
    for i in range(n):
        spec = sample_spec(seed0 + i, motions=[TRAINED[i % len(TRAINED)]])
        out.append((spec, describe(spec)[1]))
    return out


async def generate_all(port: int, items: list, mode: str, steps: int, concurrency: int) -> list:
    async with AsyncKdcvgClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, spec, points) -> tuple:  # noqa: ANN001
            async with sem:
                video = await client.generate_video(
                    f"{spec.color} {spec.product}",
                    points,
                    category=spec.category,
                    options={"steps": steps, "knowledge_mode": mode, "seed": 1000 + i},
                    timeout=3600,
                )
                return spec, video

        return await asyncio.gather(*(one(i, spec, points) for i, (spec, points) in enumerate(items)))


def judge(results: list) -> dict:
    motion_ok = colour_ok = 0
    per_motion: dict[str, list[int]] = defaultdict(list)
    sheets = []
    for spec, video in results:
        frames = decode_video(video.mp4).frames
        label = judge_motion(frames).label
        ok = label == spec.motion
        motion_ok += ok
        colour_ok += colour_matches(frames, spec.color)
        per_motion[spec.motion].append(int(ok))
        sheets.append((frames, f"{spec.color} {spec.short} / {spec.motion} -> {label}"))
    n = len(results)
    return {
        "motion": motion_ok / n,
        "colour": colour_ok / n,
        "per_motion": {m: sum(v) / len(v) for m, v in per_motion.items()},
        "sheets": sheets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (batched by the sampler)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    items = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=0, metrics_port=0, api_keys={KEY: "bench"}, log_level="WARNING")
        with background_server(settings) as running:
            if running.generation is None:
                raise SystemExit("no video model: train one with scripts/train_video_model.py")
            with KdcvgClient(f"127.0.0.1:{running.port}", api_key=KEY) as client:
                ingest_directory(client, SAMPLE_DIR)
                # One default clip alone, for the time per stage.
                spec, points = items[0]
                t0 = time.perf_counter()
                video = client.generate_video(
                    f"{spec.color} {spec.product}", points, category=spec.category, options={"seed": 1}
                )
                wall = time.perf_counter() - t0
                save_generation(video, args.out, "default-clip")
            rows = {}
            for mode in ("off", "semantic"):
                t0 = time.perf_counter()
                results = asyncio.run(generate_all(running.port, items, mode, args.steps, args.concurrency))
                elapsed = time.perf_counter() - t0
                rows[mode] = judge(results) | {"seconds": elapsed}
                sheet = contact_sheet(
                    [f for f, _ in rows[mode]["sheets"][:14]],
                    columns=16,
                    captions=[c for _, c in rows[mode]["sheets"][:14]],
                )
                write_png(sheet, args.out / f"heldout-{mode}.png")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.prompts} prompts, {args.steps} steps")
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in video.summary.stage_millis.items())
    print(f"one default clip (30 steps, guidance 2, semantic): {wall:.2f} s wall; {stages}")
    print("\n| knowledge mode | motion matches prompt | colour matches prompt | clips/min (batched) |")
    print("| --- | --- | --- | --- |")
    for mode, r in rows.items():
        print(f"| {mode} | {r['motion']:.3f} | {r['colour']:.3f} | {len(items) / r['seconds'] * 60:.1f} |")
    print("\nper-motion accuracy (off -> semantic):")
    for motion in TRAINED:
        off, sem = rows["off"]["per_motion"].get(motion, np.nan), rows["semantic"]["per_motion"].get(motion, np.nan)
        print(f"  {motion:12s} {off:.2f} -> {sem:.2f}")
    print(f"contact sheets: {args.out}/heldout-off.png, {args.out}/heldout-semantic.png")


if __name__ == "__main__":
    main()
