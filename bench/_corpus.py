"""A text-only knowledge base of procedural creatives for the retrieval benchmarks, cached under .cache/bench.

Entries carry what Ingest would store (sentence vector, atomized units, payload) without rendering or
decoding video, so 100k entries can be built in minutes. Vectors come from the project's own encoder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdcvg.data.creatives import describe, sample_spec
from kdcvg.knowledge.base import Entry, core_first, entry_text, point_key
from kdcvg.knowledge.index import IndexPoint, VectorIndex
from kdcvg.text.atomizer import VERSION as ATOMIZER_VERSION
from kdcvg.text.atomizer import Atomizer
from kdcvg.text.encoder import TextEncoder

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
TENANT = "bench"


@dataclass
class Corpus:
    entries: list[Entry]
    vectors: np.ndarray  # (n, 384) float32, L2-normalised


def _atomize_unique(atomizer: Atomizer, texts: list[str]) -> dict[str, list]:
    unique = sorted(set(texts))
    out: dict[str, list] = {}
    for i in tqdm(range(0, len(unique), 512), desc="atomize", unit_scale=512):
        chunk = unique[i : i + 512]
        for text, units in zip(chunk, atomizer.atomize_many(chunk), strict=True):
            out[text] = units
    return out


def build_corpus(n: int, encoder: TextEncoder, atomizer: Atomizer, *, seed0: int = 1_000_000) -> Corpus:
    """n entries from seeds seed0..seed0+n-1; cached by (n, seed0, encoder precision, atomizer version)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = f"{n}-{seed0}-{getattr(encoder, 'precision', 'enc')}-units{ATOMIZER_VERSION}"
    vec_path, meta_path = CACHE / f"corpus-{tag}.npy", CACHE / f"corpus-{tag}.jsonl"
    if vec_path.exists() and meta_path.exists():
        entries = [Entry.from_payload(json.loads(line)) for line in meta_path.read_text().splitlines()]
        return Corpus(entries, np.load(vec_path))
    t0 = time.perf_counter()
    specs = [sample_spec(seed0 + i) for i in range(n)]
    texts = [describe(s) for s in specs]
    unit_table = _atomize_unique(atomizer, [t for caption, points in texts for t in (caption, *points)])
    entries = []
    for spec, (caption, points) in zip(specs, texts, strict=True):
        units = core_first([unit_table[t] for t in (caption, *points)])
        entries.append(
            Entry(
                id=f"{spec.seed:064x}",
                tenant=TENANT,
                category=spec.category,
                caption=caption,
                selling_points=points,
                motion=spec.motion,
                product=spec.product,
                labels={},
                frame_count=spec.frames,
                width=spec.width,
                height=spec.height,
                fps=spec.fps,
                keyframes=[],
                units=units,
                video_bytes=0,
                created_ms=0,
            )
        )
    full = [entry_text(e.caption, e.selling_points) for e in entries]
    vectors = np.concatenate(
        [encoder.encode(full[i : i + 256]) for i in tqdm(range(0, n, 256), desc="encode", unit_scale=256)]
    ).astype(np.float32)
    np.save(vec_path, vectors)
    meta_path.write_text("\n".join(json.dumps(e.payload()) for e in entries))
    print(f"built corpus of {n} in {time.perf_counter() - t0:.0f} s")
    return Corpus(entries, vectors)


def fill_index(index: VectorIndex, corpus: Corpus, batch: int = 2048) -> None:
    for i in tqdm(range(0, len(corpus.entries), batch), desc="upsert", unit_scale=batch):
        points = [
            IndexPoint(
                id=point_key(TENANT, e.id),
                vector=corpus.vectors[i + j],
                payload=e.payload() | {"tenant": TENANT, "category": e.category},
            )
            for j, e in enumerate(corpus.entries[i : i + batch])
        ]
        index.upsert(points)


def queries(n: int, *, seed0: int = 5_000_000) -> list[tuple[list[str], str, str]]:
    """Held-out procedural queries: (selling points that name a motion, motion, category)."""
    out = []
    for i in range(n):
        spec = sample_spec(seed0 + i)
        _, points = describe(spec)
        out.append((points, spec.motion, spec.category))
    return out
