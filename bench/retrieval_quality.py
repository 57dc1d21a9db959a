"""Retrieval quality: motion recall@1 and @5 of plain cosine vs the Search-T2V ranking (Eq. 6-8).

200 held-out procedural queries whose motion is known, against a knowledge base of procedural creatives.
recall@k: the share of queries with an entry of the right motion in the top k; precision@5: the share of
the top 5 that has the right motion.

    python bench/retrieval_quality.py --entries 5000 --queries 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _corpus import ROOT, TENANT, build_corpus, fill_index, queries  # noqa: E402

from kdcvg.knowledge.base import KnowledgeBase, Limits  # noqa: E402
from kdcvg.knowledge.blobs import BlobStore  # noqa: E402
from kdcvg.knowledge.events import EventLog  # noqa: E402
from kdcvg.knowledge.index import EdgeIndex, HnswParams  # noqa: E402
from kdcvg.text.atomizer import Atomizer  # noqa: E402
from kdcvg.text.batcher import MicroBatcher  # noqa: E402
from kdcvg.text.encoder import TextEncoder  # noqa: E402


async def evaluate(kb: KnowledgeBase, qs: list, ranking: str) -> dict:
    hits1 = hits5 = prec5 = 0.0
    per_motion: dict[str, list[int]] = defaultdict(list)
    for points, motion, _ in qs:
        result = await kb.search(TENANT, points, limit=5, ranking=ranking)
        motions = [r.entry.motion for r in result.references]
        top1 = bool(motions) and motions[0] == motion
        hits1 += top1
        hits5 += motion in motions
        prec5 += sum(m == motion for m in motions) / 5
        per_motion[motion].append(int(top1))
    n = len(qs)
    return {
        "r1": hits1 / n,
        "r5": hits5 / n,
        "p5": prec5 / n,
        "per_motion": {m: sum(v) / len(v) for m, v in sorted(per_motion.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=48, help="vector-index pool for the Search-T2V filters")
    args = parser.parse_args()
    encoder = TextEncoder.load(ROOT / ".cache" / "models", precision="int8")
    atomizer = Atomizer()
    corpus = build_corpus(args.entries, encoder, atomizer)
    qs = queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = EdgeIndex(tmp / "edge", dim=384, hnsw=HnswParams())
        fill_index(index, corpus)
        kb = KnowledgeBase(
            index=index,
            blobs=BlobStore(tmp / "videos"),
            events=EventLog(tmp / "events.sqlite3"),
            encoder=encoder,
            batcher=MicroBatcher(encoder),
            atomizer=atomizer,
            limits=Limits(search_candidates=args.candidates),
        )

        async def both() -> tuple[dict, dict]:
            return await evaluate(kb, qs, "cosine"), await evaluate(kb, qs, "search_t2v")

        cosine, t2v = asyncio.run(both())
        kb.close()
    print(f"entries {args.entries}, queries {len(qs)}, candidate pool {args.candidates}")
    print("| ranking | motion recall@1 | motion recall@5 | motion precision@5 |")
    print("| --- | --- | --- | --- |")
    for name, r in (("plain cosine", cosine), ("Search-T2V Eq. 6-8", t2v)):
        print(f"| {name} | {r['r1']:.3f} | {r['r5']:.3f} | {r['p5']:.3f} |")
    print("\nper-motion recall@1 (cosine -> Search-T2V):")
    for motion in t2v["per_motion"]:
        print(f"  {motion:12s} {cosine['per_motion'][motion]:.2f} -> {t2v['per_motion'][motion]:.2f}")


if __name__ == "__main__":
    main()
