"""spaCy's tok2vec: ONNX Runtime graph (the default) vs the numpy forward vs spaCy's own, same process.

The atomizer parses a new selling point together with its guessed template sentence, and a query with
several new selling points sends 2-6 texts through spaCy at once. This times the tok2vec alone on such
batches (benchmark phrases and their templates, one thread) and the atomizer's whole cold path on each
query's selling points. The variants alternate batch by batch, so drift in the machine's speed hits them
alike; ratios are against spaCy's own tok2vec and against the numpy forward.

    python bench/spacy_tok2vec.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from _corpus import queries

from kdcvg.text.atomizer import Atomizer
from kdcvg.text.fast_spacy import OrtTok2Vec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the server's parser thread
    atomizer = Atomizer()
    atomizer.warm_up()
    component = atomizer.nlp.get_pipe("tok2vec")
    installed = component.predict
    if not isinstance(installed, OrtTok2Vec):
        raise SystemExit(f"the ONNX Runtime tok2vec is not installed here ({type(installed).__name__})")
    variants = {"spaCy": component.model.predict, "numpy forward": installed.forward, "ONNX Runtime": installed}
    phrases = list(dict.fromkeys(p for points, _, _ in queries(500) for p in points))
    texts = [t for p in phrases for t in (p, atomizer._likely_template(p) or p)]
    docs = [atomizer.nlp.make_doc(t) for t in texts]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads 1; {len(phrases)} phrases")
    print("\n| texts per call | spaCy ms | numpy forward ms | ONNX Runtime ms | vs spaCy | vs numpy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in (1, 2, 4, 6):
        batches = [docs[i : i + size] for i in range(0, len(docs) - size + 1, size)]
        ms: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats + 2):
            for batch in batches:
                for name, forward in variants.items():
                    t0 = time.perf_counter()
                    forward(batch)
                    if repeat >= 2:  # the first two passes warm up
                        ms[name].append((time.perf_counter() - t0) * 1e3)
        p50 = {name: float(np.percentile(v, 50)) for name, v in ms.items()}
        print(
            f"| {size} | {p50['spaCy']:.3f} | {p50['numpy forward']:.3f} | {p50['ONNX Runtime']:.3f} | "
            f"{p50['spaCy'] / p50['ONNX Runtime']:.2f}x | {p50['numpy forward'] / p50['ONNX Runtime']:.2f}x |"
        )

    print("\nThe atomizer's cold path (cache cleared) on each query's selling points, tok2vec by variant:")
    print("\n| tok2vec | p50 ms | p90 ms | max ms |")
    print("| --- | --- | --- | --- |")
    per_query = [list(points) for points, _, _ in queries(500)]
    ms = {name: [] for name in ("numpy forward", "ONNX Runtime")}
    for _ in range(3):
        for points in per_query:
            for name in ms:
                component.predict = variants[name]
                atomizer._cache.clear()
                t0 = time.perf_counter()
                atomizer.atomize_many(points)
                ms[name].append((time.perf_counter() - t0) * 1e3)
    component.predict = installed
    for name, v in ms.items():
        print(f"| {name} | {np.percentile(v, 50):.2f} | {np.percentile(v, 90):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
