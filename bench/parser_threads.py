"""A new phrase's parse with PyTorch on one thread vs the default (one per core), alone and beside a busy core.

The parser's small matrix products run in ``torch.mm`` (kdcvg.text.fast_spacy). With PyTorch's default
thread count they go to an OpenMP team with one thread per core; when another process keeps a core busy
(here an encoder loop, as a concurrent search's encoding would), the team's second thread has to wait for
that core. The search server's parser thread runs single-threaded for that reason (KnowledgeBase). Each
round times the atomizer's cold path (cache cleared) on every benchmark phrase, in a worker thread; the
variants alternate within one process, so drift in the machine's speed hits them alike.

    python bench/parser_threads.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from _corpus import ROOT, queries

from kdcvg.knowledge.base import _one_torch_thread
from kdcvg.text.atomizer import Atomizer
from kdcvg.text.encoder import TextEncoder


def _encoder_loop(stop: multiprocessing.synchronize.Event) -> None:
    encoder = TextEncoder.load(ROOT / ".cache" / "models", precision="int8", threads=1)
    while not stop.is_set():
        encoder.encode(["a red bottle spins slowly to show every angle. free shipping on every order"])


def cold_parse_ms(atomizer: Atomizer, phrases: list[str]) -> tuple[float, float]:
    ms = []
    for phrase in phrases:
        atomizer._cache.clear()
        t0 = time.perf_counter()
        atomizer.atomize_many([phrase])
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    atomizer = Atomizer()
    atomizer.warm_up()
    phrases = list(dict.fromkeys(p for points, _, _ in queries(500) for p in points))
    default_pool, single_pool = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    _one_torch_thread(single_pool)
    pools = {
        f"default ({default_pool.submit(torch.get_num_threads).result()} threads)": default_pool,
        f"parser's ({single_pool.submit(torch.get_num_threads).result()} thread)": single_pool,
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(phrases)} phrases, cold parse each")
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    ctx = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for busy in ("alone", "beside an encoder loop in another process"):
            stop = ctx.Event()
            loop = ctx.Process(target=_encoder_loop, args=(stop,)) if busy != "alone" else None
            if loop is not None:
                loop.start()
                time.sleep(3.0)  # the encoder's load and first runs
            for name, pool in pools.items():
                rows.setdefault((busy, name), []).append(pool.submit(cold_parse_ms, atomizer, phrases).result())
            if loop is not None:
                stop.set()
                loop.join()
    print("\n| busy | PyTorch threads in the parsing thread | p50 ms per round | p90 ms per round |")
    print("| --- | --- | --- | --- |")
    for (busy, name), values in rows.items():
        p50 = ", ".join(f"{a:.2f}" for a, _ in values)
        p90 = ", ".join(f"{b:.2f}" for _, b in values)
        print(f"| {busy} | {name} | {p50} | {p90} |")


if __name__ == "__main__":
    main()
