"""Scoring speed: frames per second of each metric, and ScoreStream's latency to its first partial score.

1. Per metric, in process: frames/s of MotionXScore, TSScore, ProductScore and the reward model on
   procedural clips at 64x64 (the generated size) and 256x256, one thread.
2. Over gRPC against an in-process server: a 32-frame clip sent as raw frames at a given pace
   (default 8 fps, real time) on ScoreStream; latency from the first frame sent to the first partial
   score, and to the summary; against the baseline of the same clip on the unary Score, which can only
   answer once the whole clip has been sent.

    python bench/scoring_throughput.py [--clips 6] [--pace 8]
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

import cv2
import grpc
import numpy as np

from kdcvg.cli import background_server
from kdcvg.config import Settings
from kdcvg.data.creatives import make_creative
from kdcvg.media.video import encode_mp4
from kdcvg.scoring import motionx, product, tsscore
from kdcvg.scoring.reward import load_reward_model, reward_score
from kdcvg.text.encoder import TextEncoder
from kdcvg.v1 import scoring_pb2, scoring_pb2_grpc

KEY = "bench-key"
META = (("authorization", f"Bearer {KEY}"),)


def upscale(frames: np.ndarray, side: int) -> np.ndarray:
    return np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) for f in frames])


def per_metric(clips: list, side: int, encoder: TextEncoder) -> dict[str, float]:
    """Frames per second of each metric over the clips, at side x side."""
    reader, model = tsscore.TextReader(), load_reward_model()
    data = [(upscale(c.frames, side) if side != c.frames.shape[1] else c.frames, c) for c in clips]
    texts = encoder.encode([c.caption for c in clips])
    runs = {
        "motionx": lambda f, c, i: motionx.motionx_score(f, 8.0),
        "tsscore": lambda f, c, i: tsscore.ts_score(f, reader),
        "product": lambda f, c, i: product.product_score(f, product.ProductReference.from_image(f[0])),
        "reward": lambda f, c, i: reward_score(model, f, texts[i]),
    }
    out = {}
    for name, run in runs.items():
        run(*data[0], 0)  # warm-up: model loading, first-call costs
        n, t0 = 0, time.perf_counter()
        for i, (frames, c) in enumerate(data):
            try:
                run(frames, c, i)
            except Exception:  # noqa: BLE001 - a clip without text has no TSScore; it still cost the OCR
                pass
            n += len(frames)
        out[name] = n / (time.perf_counter() - t0)
    return out


async def stream_latency(port: int, frames: np.ndarray, caption: str, pace: float) -> tuple[float, float]:
    """ms from the first frame sent to the first partial, and to the summary."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = scoring_pb2_grpc.ScoringServiceStub(ch)
        t0 = 0.0

        async def requests():
            nonlocal t0
            yield scoring_pb2.ScoreStreamRequest(options=scoring_pb2.ScoreOptions(prompt=caption, fps=8))
            t0 = time.perf_counter()
            for i, f in enumerate(frames):
                if pace > 0:
                    await asyncio.sleep(max(0.0, t0 + i / pace - time.perf_counter()))
                h, w = f.shape[:2]
                yield scoring_pb2.ScoreStreamRequest(frame=scoring_pb2.RawFrame(width=w, height=h, rgb=f.tobytes()))

        first = None
        async for event in stub.ScoreStream(requests(), metadata=META):
            if event.HasField("partial") and first is None:
                first = (time.perf_counter() - t0) * 1000
        return first or float("nan"), (time.perf_counter() - t0) * 1000


async def unary_latency(port: int, frames: np.ndarray, caption: str, pace: float) -> float:
    """ms from the first frame's time to the Score answer: the whole clip must exist before it is sent."""
    mp4 = encode_mp4(frames, fps=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = scoring_pb2_grpc.ScoringServiceStub(ch)
        capture = len(frames) / pace if pace > 0 else 0.0
        t0 = time.perf_counter()
        await stub.Score(
            scoring_pb2.ScoreRequest(options=scoring_pb2.ScoreOptions(prompt=caption, fps=8), video=mp4), metadata=META
        )
        return capture * 1000 + (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--pace", type=float, default=8.0, help="frames/s the stream is sent at; 0 = at once")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clips = [make_creative(7000 + i, overlay_prob=1.0) for i in range(args.clips)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=0, metrics_port=0, api_keys={KEY: "bench"}, log_level="WARNING")
        encoder = TextEncoder.load(settings.models_dir, precision="fp32")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.clips} procedural clips of 16 frames")
        for side in (64, 256):
            fps = per_metric(clips, side, encoder)
            print(f"frames/s at {side}x{side}, one thread: " + ", ".join(f"{k} {v:.0f}" for k, v in fps.items()))
        with background_server(settings, generation=False) as running:
            running.scorer.warm_up()
            firsts, ends, unary = [], [], []
            for c in clips:
                frames = np.concatenate([c.frames, c.frames[::-1]])  # 32 frames
                first, end = asyncio.run(stream_latency(running.port, frames, c.caption, args.pace))
                firsts.append(first)
                ends.append(end)
                unary.append(asyncio.run(unary_latency(running.port, frames, c.caption, args.pace)))
        med = statistics.median
        print(
            f"ScoreStream, 32 frames of 64x64 sent at {args.pace:g} fps, all metrics but crscore: first partial "
            f"{med(firsts):.0f} ms after the first frame (median of {len(clips)}), summary {med(ends):.0f} ms; "
            f"unary Score answers {med(unary):.0f} ms after the first frame exists: the stream's first score "
            f"comes {med(unary) / med(firsts):.1f}x sooner"
        )


if __name__ == "__main__":
    main()
