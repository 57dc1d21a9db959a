"""What a motion prior adds: the KD-CVG ablation on motions the base model never learnt.

The shipped model was trained on 7 motions; orbit, shake and pulse were held out. The knowledge base gets
reference creatives of every motion (`--held-refs` per held-out motion, `--trained-refs` per trained one),
each distilled into a motion prior through PriorService.DistillPrior (the bulk step, timed per prior).
Held-out prompts (product "<colour> <product>", the creative's selling points) ask for the held-out motions
and are generated through the real server in four knowledge modes:

- `off`: the prompt alone;
- `semantic`: the retrieved reference's caption fused into the text;
- `full`: semantic + the retrieved reference's LoRA;
- `full-random`: semantic + LoRA of a random knowledge-base entry (pinned with reference_id), the paper-002
  ablation without retrieval.

Each clip is decoded and labelled by the motion judge; the table is the share whose label is the prompt's
motion. Priors are kept in --data-dir between runs (an entry's id is its content hash), so a second run
with the same weights and loss re-uses them; --fresh starts over.

    python bench/motion_prior.py --prompts-per-motion 10 --held-refs 2 --trained-refs 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kdcvg.cli import background_server  # noqa: E402
from kdcvg.config import Settings  # noqa: E402
from kdcvg.data.creatives import MOTIONS, describe, make_creative, sample_spec  # noqa: E402
from kdcvg.judge import judge_motion  # noqa: E402
from kdcvg.media.contact_sheet import contact_sheet, write_png  # noqa: E402
from kdcvg.media.video import decode_video, encode_mp4  # noqa: E402
from kdcvg.v1 import prior_pb2, prior_pb2_grpc  # noqa: E402
from kdcvg_client import AsyncKdcvgClient, KdcvgClient  # noqa: E402

HELD_OUT = ("orbit", "shake", "pulse")
KEY = "bench-key"
META = (("authorization", f"Bearer {KEY}"),)


def references(held: int, trained: int) -> list:
    out, seed = [], 8_000_000
    for motion in MOTIONS:
        for _ in range(held if motion in HELD_OUT else trained):
            out.append(make_creative(seed, motions=[motion]))
            seed += 1
    return out


def prompts(per_motion: int) -> list:
    out = []
    for i in range(per_motion * len(HELD_OUT)):
        spec = sample_spec(8_500_000 + i, motions=[HELD_OUT[i % len(HELD_OUT)]])
        out.append((spec, describe(spec)[1]))
    return out


def distil_all(port: int, entries: list[str], steps: int) -> list[tuple[float, float]]:
    """Distils every entry without a prior; (seconds, final loss) of each distillation run."""
    timings = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = prior_pb2_grpc.PriorServiceStub(ch)
        have = {p.id for p in stub.ListPriors(prior_pb2.ListPriorsRequest(page_size=1000), metadata=META).priors}
        todo = [e for e in entries if e not in have]
        for entry_id in tqdm(todo, desc="distil priors", unit="prior"):
            t0 = time.perf_counter()
            last = None
            for event in stub.DistillPrior(
                prior_pb2.DistillPriorRequest(entry_id=entry_id, steps=steps), metadata=META
            ):
                last = event
            timings.append((time.perf_counter() - t0, last.prior.final_loss))
    return timings


async def generate_all(
    port: int, items: list, mode: str, steps: int, concurrency: int, pins: list[str], scale: float
) -> list:
    async with AsyncKdcvgClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, spec, points) -> tuple:  # noqa: ANN001
            async with sem:
                video = await client.generate_video(
                    f"{spec.color} {spec.product}",
                    points,
                    category=0,  # no category filter: the knowledge base holds only a few references
                    options={
                        "steps": steps,
                        "knowledge_mode": "full" if mode == "full-random" else mode,
                        "seed": 100 + i,
                        "prior_scale": scale if mode.startswith("full") else 0.0,
                    },
                    reference_id=pins[i] if mode == "full-random" else "",
                    timeout=3600,
                )
                return spec, video

        return await asyncio.gather(*(one(i, s, p) for i, (s, p) in enumerate(items)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts-per-motion", type=int, default=10)
    parser.add_argument("--held-refs", type=int, default=2, help="references per held-out motion")
    parser.add_argument("--trained-refs", type=int, default=1, help="references per trained motion")
    parser.add_argument("--distil-steps", type=int, default=400)
    parser.add_argument("--loss", default="code", help="motion loss of the distillation (KDCVG_PRIOR_LOSS)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--scale", type=float, default=1.0, help="prior_scale of the full modes")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["off", "semantic", "full", "full-random"])
    parser.add_argument("--data-dir", type=Path, default=Path("out/bench/motion-prior-kb"))
    parser.add_argument("--fresh", action="store_true", help="drop the knowledge base and priors of earlier runs")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    data_dir = args.data_dir / f"{args.loss}-lr{args.lr:g}-s{args.distil_steps}"
    if args.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    refs, items = references(args.held_refs, args.trained_refs), prompts(args.prompts_per_motion)
    settings = Settings(
        data_dir=data_dir,
        port=0,
        metrics_port=0,
        api_keys={KEY: "bench"},
        log_level="WARNING",
        prior_loss=args.loss,
        prior_learning_rate=args.lr,
        prior_device_slots=8,
    )
    rows, sheets = {}, {}
    with background_server(settings) as running:
        if running.generation is None:
            raise SystemExit("no video model: train one with scripts/train_video_model.py")
        with KdcvgClient(f"127.0.0.1:{running.port}", api_key=KEY) as client:
            entries, motion_of = [], {}
            for c in tqdm(refs, desc="ingest references", unit="clip"):
                reply = client.ingest(
                    encode_mp4(c.frames, fps=c.spec.fps),
                    category=c.category,
                    caption=c.caption,
                    selling_points=c.selling_points,
                    motion=c.motion,
                    product=c.product,
                )
                entries.append(reply.entry.id)
                motion_of[reply.entry.id] = c.motion
        timings = distil_all(running.port, entries, args.distil_steps)
        rng = random.Random(0)
        pins = [rng.choice(entries) for _ in items]
        for mode in args.modes:
            t0 = time.perf_counter()
            results = asyncio.run(
                generate_all(running.port, items, mode, args.steps, args.concurrency, pins, args.scale)
            )
            elapsed = time.perf_counter() - t0
            per = defaultdict(list)
            ref_right = []
            captions, frames_list = [], []
            for spec, video in results:
                frames = decode_video(video.mp4).frames
                label = judge_motion(frames).label
                per[spec.motion].append(label == spec.motion)
                if video.references:
                    ref_right.append(motion_of.get(video.references[0].entry_id) == spec.motion)
                frames_list.append(frames)
                captions.append(f"{spec.color} {spec.short} / {spec.motion} -> {label}")
            hits = [x for v in per.values() for x in v]
            rows[mode] = {
                "motion": sum(hits) / len(hits),
                "per": {m: sum(v) / len(v) for m, v in per.items()},
                "ref_right": (sum(ref_right) / len(ref_right)) if ref_right else float("nan"),
                "seconds": elapsed,
            }
            sheets[mode] = write_png(
                contact_sheet(frames_list[:9], columns=16, captions=captions[:9]), args.out / f"prior-{mode}.png"
            )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; loss {args.loss}, lr {args.lr:g}, "
        f"{args.distil_steps} distillation steps; {len(refs)} references, {len(items)} held-out prompts, "
        f"{args.steps} sampler steps"
    )
    if timings:
        secs = [t for t, _ in timings]
        print(
            f"distillation: {len(timings)} priors, {statistics.mean(secs):.1f} s each (min {min(secs):.1f}, "
            f"max {max(secs):.1f}); final loss mean {statistics.mean(loss for _, loss in timings):.4f}"
        )
    print("\n| knowledge mode | motion matches prompt | " + " | ".join(HELD_OUT) + " | reference of the right motion |")
    print("| --- | --- | " + " | ".join("---" for _ in HELD_OUT) + " | --- |")
    for mode, r in rows.items():
        per = " | ".join(f"{r['per'].get(m, float('nan')):.2f}" for m in HELD_OUT)
        print(f"| {mode} | {r['motion']:.3f} | {per} | {r['ref_right']:.2f} |")
    print("contact sheets: " + ", ".join(str(p) for p in sheets.values()))


if __name__ == "__main__":
    main()
