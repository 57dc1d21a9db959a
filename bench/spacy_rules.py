"""spaCy's rule components on short texts: the attribute ruler's matching and the rule lemmatizer, ours
(kdcvg.text.fast_spacy.RuleMatcher, CachedLemmatizer) vs spaCy's own, same process, same docs.

Both run while the parser's thread holds the GIL, so every microsecond here is one that a search's vector
search and the encoder's Python side wait for. Benchmark phrases with their guessed template sentences go
through in batches of 1-6 texts (as the atomizer sends them); the variants alternate batch by batch, so
drift in the machine's speed hits them alike. Ratios are spaCy's time over ours.

    python bench/spacy_rules.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from _corpus import queries
from spacy.pipeline import Lemmatizer
from spacy.tokens import Doc

from kdcvg.text.atomizer import Atomizer
from kdcvg.text.fast_spacy import CachedLemmatizer, RuleMatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the server's parser thread
    atomizer = Atomizer()
    atomizer.warm_up()
    nlp = atomizer.nlp
    ruler = nlp.get_pipe("attribute_ruler")
    lemmatizer = nlp.get_pipe("lemmatizer")
    ours_match, ours_lemma = ruler.match, getattr(lemmatizer, "_kdcvg_fast", None)
    if not isinstance(ours_match, RuleMatcher) or not isinstance(ours_lemma, CachedLemmatizer):
        raise SystemExit("the fast attribute ruler or lemmatizer is not installed here")
    spacy_match = type(ruler).match.__get__(ruler)
    spacy_lemma = Lemmatizer.__call__.__get__(lemmatizer)

    phrases = list(dict.fromkeys(p for points, _, _ in queries(500) for p in points))
    texts = [t for p in phrases for t in (p, atomizer._likely_template(p) or p)]
    parsed = list(nlp.pipe(texts, disable=["attribute_ruler", "lemmatizer"]))
    ruled = list(nlp.pipe(texts, disable=["lemmatizer"]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(phrases)} phrases, {len(texts)} texts")

    def match(fn: Callable[[Doc], list]) -> Callable[[list[Doc]], None]:
        return lambda batch: [fn(d) for d in batch] and None

    def lemmas(fn: Callable[[Doc], Doc]) -> Callable[[list[Doc]], None]:
        def run(batch: list[Doc]) -> None:
            for d in batch:
                fn(d.copy())  # a fresh copy each time: the lemmatizer skips tokens that have a lemma

        return run

    def cold(fn: Callable[[list[Doc]], None], forget: Callable[[], None]) -> Callable[[list[Doc]], None]:
        def run(batch: list[Doc]) -> None:
            forget()  # as if every word were new: what a first search with these words pays
            fn(batch)

        return run

    def copies(batch: list[Doc]) -> None:
        for d in batch:
            d.copy()

    jobs = {
        "attribute ruler: match": (
            parsed,
            match(spacy_match),
            match(ours_match),
            cold(match(ours_match), ours_match._first.clear),
            None,
        ),
        "lemmatizer": (
            ruled,
            lemmas(spacy_lemma),
            lemmas(ours_lemma),
            cold(lemmas(ours_lemma), ours_lemma.clear),
            copies,
        ),
    }
    print("\n| component | texts per call | spaCy ms | ours ms | spaCy / ours | ours cold ms | spaCy / cold |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (docs, theirs, ours, ours_cold, overhead) in jobs.items():
        for size in (1, 2, 4, 6):
            batches = [docs[i : i + size] for i in range(0, len(docs) - size + 1, size)]
            ms: dict[str, list[float]] = {"spaCy": [], "ours": [], "cold": [], "copy": []}
            # Warm first (what ours keeps is filled by the first passes and never cleared), then cold; in
            # each, the variants alternate batch by batch.
            for variants in ((("spaCy", theirs), ("ours", ours), ("copy", overhead)), (("cold", ours_cold),)):
                for repeat in range(args.repeats + 2):
                    for batch in batches:
                        for key, fn in variants:
                            if fn is None:
                                continue
                            t0 = time.perf_counter()
                            fn(batch)
                            if repeat >= 2:  # the first two passes warm up (and fill what ours keeps)
                                ms[key].append((time.perf_counter() - t0) * 1e3)
            base = float(np.percentile(ms["copy"], 50)) if ms["copy"] else 0.0  # the Doc copies, not timed
            p50 = {k: float(np.percentile(v, 50)) - base for k, v in ms.items() if k != "copy"}
            print(
                f"| {name} | {size} | {p50['spaCy']:.3f} | {p50['ours']:.3f} | {p50['spaCy'] / p50['ours']:.2f}x | "
                f"{p50['cold']:.3f} | {p50['spaCy'] / p50['cold']:.2f}x |"
            )


if __name__ == "__main__":
    main()
