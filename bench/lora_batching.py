"""Multi-LoRA batching and prior hot-loading, on the shipped model, in one process.

Sampling throughput of 8 requests (30 guided steps each) through the BatchedSampler:
- 8 requests with 8 different LoRAs in the same batch (per-row gathered low-rank update, BGMV pattern);
- the same batch with one LoRA for all 8;
- the same batch with no LoRA (the floor);
- 8 requests one after another, each with its LoRA merged into the q weights (W + s B A) and unmerged after
  (what serving per-request LoRAs costs without multi-LoRA batching).
Then the time to bring a prior into a device slot from each tier (disk, host memory, already resident).

    python bench/lora_batching.py --rank 128 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdcvg.app import BUNDLED_MODEL
from kdcvg.generation.sampler import BatchedSampler, SampleJob, noise
from kdcvg.models import rectified_flow
from kdcvg.models.video_model import VideoModel
from kdcvg.priors.cache import PriorCache
from kdcvg.priors.lora import LoRAWeights, attach


def random_lora(dit: torch.nn.Module, rank: int, seed: int) -> LoRAWeights:
    w = LoRAWeights.init(dit, rank, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    for v in w.b.values():
        v.detach().copy_(torch.randn(v.shape, generator=g) * 0.02)
    return w.detached()


def jobs(model: VideoModel, loras: list[LoRAWeights | None], steps: int) -> list[SampleJob]:
    tokens, mask = model.null_tokens(1, 24)
    ts = rectified_flow.sampling_timesteps(steps, model.default_shift()).tolist()
    return [
        SampleJob(tokens[0], mask[0], ts, 2.0, noise(tuple(model.latent_shape), i), lora=lo)
        for i, lo in enumerate(loras)
    ]


async def run_batched(sampler: BatchedSampler, batch: list[SampleJob]) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(sampler.submit(j) for j in batch))
    return time.perf_counter() - t0


async def run_merged(model: VideoModel, sampler: BatchedSampler, loras: list[LoRAWeights], steps: int) -> float:
    t0 = time.perf_counter()
    for lora in loras:
        qs = {n: m for n, m in model.dit.named_modules() if n in lora.a}
        with torch.no_grad():
            deltas = {n: lora.b[n] @ lora.a[n] for n in qs}
            for n, m in qs.items():
                m.base.weight += deltas[n]
        await sampler.submit(jobs(model, [None], steps)[0])
        with torch.no_grad():
            for n, m in qs.items():
                m.base.weight -= deltas[n]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = VideoModel.load(BUNDLED_MODEL).eval()
    model.requires_grad_(False)
    attach(model.dit)
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        cache = PriorCache(Path(tmp), model.dit, device_slots=n, rank=args.rank)
        loras = [cache.store("bench", f"p{i}", random_lora(model.dit, args.rank, i)) for i in range(n)]
        sampler = BatchedSampler(model, max_rows=2 * n, max_jobs=4 * n, slots=cache.slots)
        sampler.calibrate()

        async def measure() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {k: [] for k in ("none", "one", "distinct", "merged")}
            await run_batched(sampler, jobs(model, loras, 2))  # warm-up: every LoRA in a slot
            for _ in range(args.repeats):
                out["none"].append(await run_batched(sampler, jobs(model, [None] * n, args.steps)))
                out["one"].append(await run_batched(sampler, jobs(model, [loras[0]] * n, args.steps)))
                out["distinct"].append(await run_batched(sampler, jobs(model, loras, args.steps)))
                out["merged"].append(await run_merged(model, sampler, loras, args.steps))
            return out

        times = asyncio.run(measure())

        # Hot-load from each tier: disk (nothing cached), host (not in a slot), device (resident).
        tiers: dict[str, list[float]] = {"disk": [], "host": [], "device": []}
        for i in range(20):
            pid = f"p{i % n}"
            cache.unload("bench", pid)  # drops host and device copies
            tiers["disk"].append(cache.load("bench", pid)[2])
            cache.slots.evict(cache.get("bench", pid)[0].meta["uid"])
            tiers["host"].append(cache.load("bench", pid)[2])
            tiers["device"].append(cache.load("bench", pid)[2])
    med = {k: statistics.median(v) for k, v in times.items()}
    clips = n
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"{n} requests x {args.steps} guided steps, LoRA rank {args.rank} on {len(loras[0].a)} q projections "
        f"({loras[0].nbytes / 1e6:.2f} MB fp32 each); median of {args.repeats}"
    )
    print("\n| how the 8 requests run | seconds | clips/s | vs 8 distinct LoRAs batched |")
    print("| --- | --- | --- | --- |")
    labels = {
        "distinct": "one batch, 8 different LoRAs (rows grouped by LoRA)",
        "one": "one batch, the same LoRA for all",
        "none": "one batch, no LoRA",
        "merged": "one after another, LoRA merged into the weights",
    }
    for key in ("distinct", "one", "none", "merged"):
        print(f"| {labels[key]} | {med[key]:.2f} | {clips / med[key]:.2f} | {med['distinct'] / med[key]:.2f}x |")
    print("\n| hot-load from | median ms | p90 ms |")
    print("| --- | --- | --- |")
    for tier, v in tiers.items():
        v = sorted(v)
        print(f"| {tier} | {statistics.median(v):.3f} | {v[int(0.9 * (len(v) - 1))]:.3f} |")


if __name__ == "__main__":
    main()
