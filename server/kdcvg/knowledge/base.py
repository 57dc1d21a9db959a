"""The knowledge base: reference creatives in (Ingest), references for selling points out (Search).

It ties the parts together and holds no gRPC: video storage (BlobStore), the vector index (VectorIndex),
the text encoder, the atomizer and the Search-T2V ranking. Every method is scoped to one tenant.

Write order makes an ingest all-or-nothing: the video is spooled and fsynced, moved into place, then one
index point (vector + the whole entry as payload) is upserted durably, and only then acknowledged. A crash
before the upsert leaves at most an orphan video file, which the next ingest of the same bytes reuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from kdcvg.errors import InvalidInput, NotFound
from kdcvg.knowledge.blobs import BlobStore, is_sha256
from kdcvg.knowledge.events import EventLog
from kdcvg.knowledge.index import KEY_FIELD, Hit, IndexPoint, VectorIndex, point_uuid
from kdcvg.media.keyframes import select_keyframes
from kdcvg.media.video import VideoDecodeError, decode_video
from kdcvg.retrieval.ranking import (
    RankedCandidate,
    RankingParams,
    UnitEmbeddingCache,
    UnitVectors,
    rank,
    rank_cosine,
)
from kdcvg.retrieval.unit_table import UnitTable
from kdcvg.text.atomizer import VERSION as ATOMIZER_VERSION
from kdcvg.text.atomizer import Atomizer, SemanticUnit, pick_core
from kdcvg.text.batcher import Claim, MicroBatcher
from kdcvg.text.encoder import TextEncoder

log = logging.getLogger("kdcvg.knowledge")


@dataclass
class Limits:
    max_text_chars: int = 200
    max_caption_chars: int = 1000
    max_selling_points: int = 8
    max_video_frames: int = 256
    max_video_pixels: int = 1280 * 720
    max_search_limit: int = 100
    search_candidates: int = 48  # see Settings.search_candidates
    phrase_cache_size: int = 16384  # see Settings.phrase_cache_size
    max_labels: int = 32
    default_page_size: int = 100
    max_page_size: int = 1000


@dataclass
class IngestMeta:
    category: str
    caption: str
    selling_points: list[str]
    motion: str = ""
    product: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def unit_payload(unit: SemanticUnit) -> list:
    """A unit as stored in an entry's payload: [motion, actor, recipient, core, nominal]."""
    return [unit.motion, unit.actor, unit.recipient, unit.core, unit.nominal]


def unit_from_payload(stored: Sequence) -> SemanticUnit:
    """The inverse of `unit_payload`; payloads written before atomizer version 5 have no ``nominal``."""
    motion, actor, recipient, core = stored[:4]
    return SemanticUnit(
        str(motion), str(actor), str(recipient), bool(core), bool(stored[4]) if len(stored) > 4 else False
    )


@dataclass
class Entry:
    id: str
    tenant: str
    category: str
    caption: str
    selling_points: list[str]
    motion: str
    product: str
    labels: dict[str, str]
    frame_count: int
    width: int
    height: int
    fps: float
    keyframes: list[int]
    units: list[SemanticUnit]
    video_bytes: int
    created_ms: int
    has_prior: bool = False
    units_version: int = ATOMIZER_VERSION  # the atomizer's VERSION that made ``units``

    def payload(self) -> dict:
        data = asdict(self)
        data["units"] = [unit_payload(u) for u in self.units]
        return data

    @classmethod
    def from_payload(cls, payload: dict) -> Entry:
        data = dict(payload)
        data["units"] = [unit_from_payload(u) for u in data.get("units", [])]
        data["units_version"] = units_version(data)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Reference:
    entry: Entry
    parts: RankedCandidate


@dataclass
class SearchResult:
    references: list[Reference]
    query_units: list[SemanticUnit]
    retrieval_id: str
    candidates: int
    stage_micros: dict[str, int]


def units_version(payload: dict) -> int:
    """The atomizer version of a stored entry's units; entries from before versions were kept are 1."""
    try:
        return int(payload.get("units_version", 1))
    except (TypeError, ValueError):
        return 1


def point_key(tenant: str, entry_id: str) -> str:
    return f"{tenant}/{entry_id}"


_TOKEN_VERSION = 1
_BAD_TOKEN = (
    "page_token is not one this server issued: pass the next_page_token of the previous ListEntries response "
    "unchanged, or an empty page_token for the first page"
)


def encode_page_token(offset: str, category: str | None) -> str:
    """An opaque ListEntries page token: where the next page starts and the filter it was issued for."""
    raw = json.dumps({"v": _TOKEN_VERSION, "after": offset, "category": category or ""}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, category: str | None) -> str | None:
    """The index offset a page token names (None for the empty token); InvalidInput for a token this
    server did not issue or one issued for another category."""
    token = token.strip()
    if not token:
        return None
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != _TOKEN_VERSION:
            raise ValueError("unknown token version")
        offset, issued_for = data["after"], data["category"]
        if not isinstance(offset, str) or not isinstance(issued_for, str):
            raise ValueError("malformed token")
        offset = str(uuid.UUID(offset))
    except (ValueError, KeyError, TypeError, binascii.Error):  # json and unicode errors are ValueErrors
        raise InvalidInput(_BAD_TOKEN) from None
    if issued_for != (category or ""):
        raise InvalidInput(
            f"page_token was issued for category {issued_for or 'unspecified (all)'}, not "
            f"{category or 'unspecified (all)'}: send the same category with every page, or start over "
            "with an empty page_token"
        )
    return offset


def core_first(units_per_text: Sequence[list[SemanticUnit]]) -> list[SemanticUnit]:
    """Flattens per-text units into one list with exactly one core unit, chosen by `pick_core`: a motion
    verb first, so "glides to the right" is the core of a query that opens with "save 30% today"."""
    flat = [u for units in units_per_text for u in units]
    if not flat:
        return []
    chosen = pick_core(units_per_text)
    index = next(i for i, u in enumerate(flat) if u is chosen)
    return [replace(u, core=i == index) for i, u in enumerate(flat)]


def entry_text(caption: str, selling_points: Sequence[str]) -> str:
    return ". ".join([caption.strip().rstrip("."), *[s.strip() for s in selling_points]])


def query_phrases(product: str, selling_points: Sequence[str]) -> list[str]:
    """The phrases whose vectors make a query's sentence vector: the product (when given), then each point."""
    return [p for p in [product.strip()] if p] + [s.strip() for s in selling_points]


def mean_direction(vectors: np.ndarray) -> np.ndarray:
    """The unit vector along the mean of ``vectors`` (n, dim): a query's sentence vector."""
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


@dataclass
class _QueryVector:
    """A query's phrases, the vectors of those already kept, and what is left to encode."""

    phrases: list[str]
    found: dict[str, np.ndarray]
    missing: list[str]

    def complete(self, cache: UnitEmbeddingCache, vectors: np.ndarray | None = None) -> np.ndarray:
        if self.missing:
            assert vectors is not None
            self.found.update(cache.store(self.missing, vectors))
        return mean_direction(np.stack([self.found[p] for p in self.phrases]))


class KnowledgeBase:
    """Thread- and task-safe. Blocking work runs in worker threads, never on the event loop."""

    def __init__(
        self,
        *,
        index: VectorIndex,
        blobs: BlobStore,
        events: EventLog,
        encoder: TextEncoder,
        batcher: MicroBatcher,
        atomizer: Atomizer,
        limits: Limits | None = None,
        ranking: RankingParams | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.events = events
        self.encoder = encoder
        self.batcher = batcher
        self.atomizer = atomizer
        self.limits = limits or Limits()
        self.ranking = ranking or RankingParams()
        # Candidates' units for ranking, in memory (see retrieval/unit_table.py); loaded in the background.
        self.units = UnitTable(encoder.encode, encoder.dim)
        self.unit_cache = UnitEmbeddingCache(encoder.encode, known=self.units.vectors)
        # A query's sentence vector is the mean of its phrases' vectors, kept per phrase: an ad server sends
        # the same selling points again and again, and a search whose phrases are all kept runs no encoder.
        self.phrase_vectors = UnitEmbeddingCache(encoder.encode, maxsize=self.limits.phrase_cache_size)
        self._units_loader = threading.Thread(target=self._load_units, name="kdcvg-unit-table", daemon=True)
        self._units_loader.start()
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="kdcvg-parse")  # the atomizer parses one at a time
        _one_torch_thread(self._parser)
        self._ingest_locks: dict[str, asyncio.Lock] = {}
        self._searches = 0  # in flight; changed on the event loop only
        self._closing = False
        # Motion priors live beside the entries (kdcvg.priors); these hooks keep the two in step.
        self.prior_exists: Callable[[str, str], bool] | None = None
        self.on_delete: list[Callable[[str, str], None]] = []

    def warm_up(self) -> None:
        """Runs the encoder and the parser once each, so that the first searches do not pay their one-time
        set-up (ONNX Runtime's first runs at a sequence length, spaCy's lazy state). Blocking."""
        self.encoder.encode(["warm up", "a red bottle spins slowly on a marble table to show every angle"])
        self.atomizer.warm_up()

    def _load_units(self) -> None:
        stale: list[str] = []

        def pages() -> Iterator[list[tuple[str, dict]]]:
            for page in self.index.scan([KEY_FIELD, "units", "units_version"]):
                stale.extend(pid for pid, payload in page if units_version(payload) < ATOMIZER_VERSION)
                yield page

        try:
            self.units.load(pages(), KEY_FIELD)
        except Exception:  # e.g. the index closed while loading; searches read what is missing instead
            log.warning("unit table: loading stopped early", exc_info=True)
            return
        if stale:
            self.reatomize(stale)

    def reatomize(self, point_ids: Sequence[str]) -> int:
        """Recomputes the units of entries atomized by an older atomizer (by point id) from their stored
        caption and selling points, and stores them with the current version. The server runs this in the
        background at start for every such entry; each entry's parse queues on the parser's thread like a
        search's, and takes at most half of that thread's time, so searches keep going. Blocking; returns
        how many entries it updated. Stops early, with what is done kept, when the knowledge base closes."""
        t0, done = time.perf_counter(), 0
        log.warning(
            "re-atomizing entries whose units an older atomizer made",
            extra={"entries": len(point_ids), "atomizer_version": ATOMIZER_VERSION},
        )
        try:
            for start in range(0, len(point_ids), 64):
                found = self.index.payloads(point_ids[start : start + 64], [KEY_FIELD, "caption", "selling_points"])
                for pid, payload in found.items():
                    texts = [str(payload.get("caption", "")), *map(str, payload.get("selling_points") or [])]
                    t1 = time.perf_counter()
                    units = core_first(self._parser.submit(self.atomizer.atomize_many, texts).result())
                    # Half the parser's time at most: a search's new phrase queues behind this parse.
                    time.sleep(time.perf_counter() - t1)
                    stored = [unit_payload(u) for u in units]
                    self.index.set_payload([pid], {"units": stored, "units_version": ATOMIZER_VERSION})
                    if pid in self.units:
                        self.units.discard([pid])
                        self.units.add([(pid, str(payload.get(KEY_FIELD, "")).rsplit("/", 1)[-1], units)])
                    done += 1
        except Exception:  # never takes the server down; the next start does the rest
            left = {"updated": done, "left": len(point_ids) - done}
            if self._closing:  # the parser or the index shut down under it
                log.warning("re-atomizing stopped at shutdown", extra=left)
            else:
                log.exception("re-atomizing failed", extra=left)
            return done
        log.info("re-atomized entries", extra={"updated": done, "seconds": round(time.perf_counter() - t0, 2)})
        return done

    # --- validation -----------------------------------------------------------------------------------

    def check_texts(self, selling_points: Sequence[str], what: str = "selling_points") -> list[str]:
        lim = self.limits
        if not selling_points:
            raise InvalidInput(f"{what} is empty: send 1-{lim.max_selling_points} selling points")
        if len(selling_points) > lim.max_selling_points:
            raise InvalidInput(f"{what} has {len(selling_points)} items; at most {lim.max_selling_points} allowed")
        cleaned = []
        for i, text in enumerate(selling_points):
            text = text.strip()
            if not text:
                raise InvalidInput(f"{what}[{i}] is empty or whitespace")
            if len(text) > lim.max_text_chars:
                raise InvalidInput(f"{what}[{i}] has {len(text)} characters; at most {lim.max_text_chars} allowed")
            cleaned.append(text)
        return cleaned

    def validate_meta(self, meta: IngestMeta) -> IngestMeta:
        caption = meta.caption.strip()
        if not caption:
            raise InvalidInput("metadata.caption is empty: describe the creative in a sentence")
        if len(caption) > self.limits.max_caption_chars:
            raise InvalidInput(
                f"metadata.caption has {len(caption)} characters; at most {self.limits.max_caption_chars} allowed"
            )
        points = self.check_texts(meta.selling_points, "metadata.selling_points")
        if len(meta.labels) > self.limits.max_labels:
            raise InvalidInput(f"metadata.labels has {len(meta.labels)} pairs; at most {self.limits.max_labels}")
        for text, name in ((meta.motion, "motion"), (meta.product, "product")):
            if len(text) > self.limits.max_text_chars:
                raise InvalidInput(f"metadata.{name} is longer than {self.limits.max_text_chars} characters")
        return IngestMeta(meta.category, caption, points, meta.motion.strip(), meta.product.strip(), dict(meta.labels))

    # --- ingest ---------------------------------------------------------------------------------------

    async def ingest(self, tenant: str, meta: IngestMeta, spooled: Path, sha256: str, size: int) -> tuple[Entry, bool]:
        """Stores a fully received video. Returns the entry and whether it already existed."""
        meta = self.validate_meta(meta)
        lock = self._ingest_locks.setdefault(point_key(tenant, sha256), asyncio.Lock())
        try:
            async with lock:
                existing = await asyncio.to_thread(self._get_or_none, tenant, sha256)
                if existing is not None:
                    spooled.unlink(missing_ok=True)
                    return existing, True
                entry = await self._build_entry(tenant, meta, spooled, sha256, size)
                vector = (await self.batcher.encode_many([entry_text(meta.caption, meta.selling_points)]))[0]
                await asyncio.to_thread(self._commit, tenant, sha256, spooled, entry, vector)
                return entry, False
        finally:
            spooled.unlink(missing_ok=True)
            if not lock.locked():
                self._ingest_locks.pop(point_key(tenant, sha256), None)

    async def _build_entry(self, tenant: str, meta: IngestMeta, spooled: Path, sha256: str, size: int) -> Entry:
        data = await asyncio.to_thread(spooled.read_bytes)
        try:
            video = await asyncio.to_thread(
                decode_video,
                data,
                max_frames=self.limits.max_video_frames,
                max_pixels=self.limits.max_video_pixels,
            )
        except VideoDecodeError as exc:
            raise InvalidInput(f"the upload is not a usable video: {exc}") from exc
        keyframes = await asyncio.to_thread(select_keyframes, video.frames)
        # On the parser's thread, as searches parse: PyTorch runs single-threaded there (see _one_torch_thread).
        texts = [meta.caption, *meta.selling_points]
        per_text = await asyncio.wrap_future(self._parser.submit(self.atomizer.atomize_many, texts))
        units = core_first(per_text)
        # Warm the unit cache now so searches that meet this entry find its unit vectors ready.
        await asyncio.to_thread(self.unit_cache.embed, unit_strings(units))
        _, height, width = video.frames.shape[:3]
        return Entry(
            id=sha256,
            tenant=tenant,
            category=meta.category,
            caption=meta.caption,
            selling_points=meta.selling_points,
            motion=meta.motion,
            product=meta.product,
            labels=meta.labels,
            frame_count=int(video.frames.shape[0]),
            width=int(width),
            height=int(height),
            fps=float(video.fps),
            keyframes=[int(k) for k in keyframes],
            units=units,
            video_bytes=size,
            created_ms=int(time.time() * 1000),
        )

    def _commit(self, tenant: str, sha256: str, spooled: Path, entry: Entry, vector: np.ndarray) -> None:
        self.blobs.commit(spooled, tenant, sha256)
        payload = entry.payload() | {"tenant": tenant, "category": entry.category}
        key = point_key(tenant, sha256)
        self.index.upsert([IndexPoint(id=key, vector=vector, payload=payload)])
        self.units.add([(point_uuid(tenant, key), sha256, entry.units)])

    # --- read / delete --------------------------------------------------------------------------------

    def _get_or_none(self, tenant: str, entry_id: str) -> Entry | None:
        hits = self.index.retrieve([point_key(tenant, entry_id)], tenant=tenant)
        return Entry.from_payload(hits[0].payload) if hits else None

    def _check_id(self, entry_id: str) -> str:
        entry_id = entry_id.strip().lower()
        if not is_sha256(entry_id):
            raise InvalidInput(f"id {entry_id!r} is not an entry id (64 hex characters of a sha256)")
        return entry_id

    def get(self, tenant: str, entry_id: str) -> Entry:
        entry_id = self._check_id(entry_id)
        entry = self._get_or_none(tenant, entry_id)
        if entry is None:
            raise NotFound(f"no entry {entry_id} for this tenant")
        if self.prior_exists is not None:
            entry.has_prior = self.prior_exists(tenant, entry.id)
        return entry

    def list(
        self, tenant: str, *, category: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[Entry], str]:
        """One page of the tenant's entries (of ``category`` when given), in the index's stable point-id order,
        and the token of the next page ("" after the last). ``page_size`` 0 takes the default."""
        lim = self.limits
        size = page_size or lim.default_page_size
        if not 1 <= size <= lim.max_page_size:
            raise InvalidInput(
                f"page_size {page_size} is out of range 1-{lim.max_page_size} (0: the default, {lim.default_page_size})"
            )
        offset = decode_page_token(page_token, category)
        hits, next_offset = self.index.scroll(tenant, category=category, limit=size, offset=offset)
        entries = [Entry.from_payload(h.payload) for h in hits]
        if self.prior_exists is not None:
            for entry in entries:
                entry.has_prior = self.prior_exists(tenant, entry.id)
        return entries, "" if next_offset is None else encode_page_token(next_offset, category)

    def delete(self, tenant: str, entry_id: str) -> None:
        entry = self.get(tenant, entry_id)
        key = point_key(tenant, entry.id)
        self.index.delete([key], tenant=tenant)
        self.units.discard([point_uuid(tenant, key)])
        self.blobs.delete(tenant, entry.id)
        for hook in self.on_delete:
            hook(tenant, entry.id)

    def video(self, tenant: str, entry_id: str) -> bytes:
        entry = self.get(tenant, entry_id)
        return self.blobs.read(tenant, entry.id)

    def count(self, tenant: str | None = None) -> int:
        return self.index.count(tenant)

    # --- search ---------------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        selling_points: Sequence[str],
        *,
        product: str = "",
        category: str | None = None,
        limit: int = 5,
        ranking: str = "search_t2v",
    ) -> SearchResult:
        points = self.check_texts(selling_points)
        if len(product) > self.limits.max_text_chars:
            raise InvalidInput(f"product is longer than {self.limits.max_text_chars} characters")
        if not 1 <= limit <= self.limits.max_search_limit:
            raise InvalidInput(f"limit {limit} is out of range 1-{self.limits.max_search_limit}")
        stages: dict[str, int] = {}
        # Parsing overlaps encoding and the vector search: only the ranking needs the units. A cached parse
        # is answered here; a new phrase goes to the parser's own thread (spaCy, 2-8 ms).
        t0 = time.perf_counter()
        per_text = self.atomizer.lookup(points)
        parse: _ParseJob | None = None
        if per_text is None:
            parse = _ParseJob(self._parser, self._parse, points, stages)  # started once encoding starts
        else:
            stages["parse"] = int((time.perf_counter() - t0) * 1e6)
        query = {"selling_points": points, "product": product, "category": category or "", "ranking": ranking}
        t0 = time.perf_counter()
        phrases = query_phrases(product, points)
        found = self.phrase_vectors.lookup(phrases)
        wanted = _QueryVector(phrases, found, [p for p in dict.fromkeys(phrases) if p not in found])
        # With the encoder idle, this search encodes in its own worker thread (one hand-off in all); else it
        # joins the next batch of concurrent searches.
        claim = self.batcher.try_claim() if wanted.missing else None
        self._searches += 1
        try:
            vector: np.ndarray | tuple[Claim, _QueryVector]
            if not wanted.missing:  # no encoder at all
                if parse is not None:
                    parse.start()
                vector = wanted.complete(self.phrase_vectors)
                stages["encode"] = int((time.perf_counter() - t0) * 1e6)
            elif claim is not None:
                vector = (claim, wanted)  # encoded by _retrieve, in its thread, which also starts the parse
            else:
                if parse is not None:
                    parse.start()
                t0 = time.perf_counter()
                vector = wanted.complete(self.phrase_vectors, await self.batcher.encode_many(wanted.missing))
                stages["encode"] = int((time.perf_counter() - t0) * 1e6)
            refs, units, n_candidates, retrieval_id = await asyncio.to_thread(
                self._retrieve, tenant, vector, per_text, parse, category, limit, ranking, stages, query
            )
        finally:
            self._searches -= 1
            if claim is not None:
                self.batcher.release(claim)  # encode_claimed gave it back already, unless cancelled before
            if parse is not None:
                parse.cancel()  # a no-op once it runs; spares the parser a cancelled search's phrases
        return SearchResult(refs, units, retrieval_id, n_candidates, stages)

    def _parse(self, points: list[str], stages: dict[str, int]) -> list[list[SemanticUnit]]:
        t0 = time.perf_counter()
        per_text = self.atomizer.atomize_many(points)
        # A new phrase often brings unit strings never embedded: embed them here, while the query is still
        # being encoded in the other thread, rather than in the ranking that waits for this parse.
        self.unit_cache.embed(unit_strings([u for units in per_text for u in units]))
        stages["parse"] = int((time.perf_counter() - t0) * 1e6)
        return per_text

    def _retrieve(
        self,
        tenant: str,
        vector: np.ndarray | tuple[Claim, _QueryVector],
        per_text: list[list[SemanticUnit]] | None,
        parse: _ParseJob | None,
        category: str | None,
        limit: int,
        ranking: str,
        stages: dict[str, int],
        query: dict,
    ) -> tuple[list[Reference], list[SemanticUnit], int, str]:
        def units() -> list[SemanticUnit]:
            return core_first(per_text if parse is None else parse.result())

        if isinstance(vector, tuple):  # the encoder was claimed for this search
            # The parse starts here, not on the event loop: the parser holds the GIL while it runs, and the loop
            # would wait for it before handing this thread the search (0.5 ms at p50). It starts once the query
            # is tokenized (which needs the GIL too), as the model run, which does not, begins.
            # Alone (no parse beside it, no other search in flight) the encoder may use the idle core too:
            # 0.3-0.8 ms less at p50 on 2 cores; beside a parse the two threads fight over the cores.
            alone = parse is None and self._searches == 1
            t0 = time.perf_counter()
            ready = parse.start if parse is not None else None
            claim, wanted = vector
            vectors = self.batcher.encode_claimed(claim, wanted.missing, alone=alone, ready=ready)
            vector = wanted.complete(self.phrase_vectors, vectors)
            stages["encode"] = int((time.perf_counter() - t0) * 1e6)

        refs, n_candidates = self._rank(tenant, vector, units, category, limit, ranking, stages)
        t0 = time.perf_counter()
        retrieval_id = self.events.add_retrieval(tenant, query, [r.entry.id for r in refs])
        stages["log"] = int((time.perf_counter() - t0) * 1e6)
        return refs, units(), n_candidates, retrieval_id

    def _rank(
        self,
        tenant: str,
        vector: np.ndarray,
        units: Callable[[], list[SemanticUnit]],
        category: str | None,
        limit: int,
        ranking: str,
        stages: dict[str, int],
    ) -> tuple[list[Reference], int]:
        t0 = time.perf_counter()
        if ranking == "cosine":
            hits: list[Hit] = self.index.search(vector, tenant=tenant, category=category, limit=limit)
            stages["index"] = int((time.perf_counter() - t0) * 1e6)
            stages["rank"] = 0
            ranked = rank_cosine(np.asarray([h.score for h in hits], dtype=np.float32), limit=limit)
            return [Reference(Entry.from_payload(hits[r.index].payload), r) for r in ranked], len(hits)
        # The pool comes back as point ids alone; the candidates' units are in memory (self.units), and full
        # entries are read for the winners only.
        pool = max(limit, self.limits.search_candidates)
        hits = self.index.nearest(vector, tenant=tenant, category=category, limit=pool)
        t1 = time.perf_counter()
        stages["index"] = int((t1 - t0) * 1e6)
        if not hits:
            stages["rank"] = 0
            return [], 0
        point_ids = [pid for pid, _ in hits]
        missing = self.units.missing(point_ids)
        if missing:
            found = self.index.payloads(missing, [KEY_FIELD, "units"])
            self.units.add(
                [
                    (pid, str(found[pid].get(KEY_FIELD, "")).rsplit("/", 1)[-1], found[pid].get("units") or [])
                    for pid in missing
                    if pid in found
                ]
            )
            kept = [i for i, pid in enumerate(point_ids) if pid in self.units]  # deleted meanwhile: dropped
            hits = [hits[i] for i in kept]
            point_ids = [point_ids[i] for i in kept]
        packed, entry_ids = self.units.pack(point_ids)
        t_wait = time.perf_counter()
        query_units = units()  # the parse, if it is still running
        t1 += time.perf_counter() - t_wait  # waiting for the parse is not ranking
        ranked = rank(
            UnitVectors.from_units(query_units, self.unit_cache.embed, self.encoder.dim),
            np.asarray([score for _, score in hits], dtype=np.float32),
            packed,
            self.ranking,
            limit=limit,
        )
        t2 = time.perf_counter()
        stages["rank"] = int((t2 - t1) * 1e6)
        winners = [entry_ids[r.index] for r in ranked]
        full = {
            h.payload.get("id"): h for h in self.index.retrieve([point_key(tenant, e) for e in winners], tenant=tenant)
        }
        stages["fetch"] = int((time.perf_counter() - t2) * 1e6)
        refs = [
            Reference(Entry.from_payload(full[e].payload), r) for e, r in zip(winners, ranked, strict=True) if e in full
        ]
        return refs, len(hits)

    # --- feedback -------------------------------------------------------------------------------------

    def feedback(self, tenant: str, retrieval_id: str, entry_id: str, reward: float, note: str) -> str:
        if not retrieval_id.strip():
            raise InvalidInput("retrieval_id is empty: quote the retrieval_id of a SearchResponse")
        entry_id = self._check_id(entry_id)
        if not np.isfinite(reward) or not -1.0 <= reward <= 1.0:
            raise InvalidInput(f"reward {reward} is out of range [-1, 1]")
        if len(note) > self.limits.max_caption_chars:
            raise InvalidInput(f"note is longer than {self.limits.max_caption_chars} characters")
        entries = self.events.retrieval_entries(tenant, retrieval_id.strip())
        if entries is None:
            raise NotFound(f"no retrieval {retrieval_id} for this tenant")
        if entry_id not in entries:
            raise InvalidInput(f"entry {entry_id} was not among the references of retrieval {retrieval_id}")
        return self.events.add_feedback(tenant, retrieval_id.strip(), entry_id, float(reward), note).event_id

    def close(self) -> None:
        self._closing = True
        self._parser.shutdown(wait=False, cancel_futures=True)
        self.index.close()
        self.events.close()


class _ParseJob:
    """A search's parse on the parser's thread, started when the search is ready to overlap it."""

    def __init__(self, pool: ThreadPoolExecutor, fn: Callable[..., list[list[SemanticUnit]]], *args: object) -> None:
        self._pool, self._fn, self._args = pool, fn, args
        self._future: Future[list[list[SemanticUnit]]] | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._future is None and not self._cancelled:
                self._future = self._pool.submit(self._fn, *self._args)

    def result(self) -> list[list[SemanticUnit]]:
        self.start()
        if self._future is None:
            raise CancelledError("the search was cancelled before its parse started")
        return self._future.result()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._future is not None:
                self._future.cancel()


def _one_torch_thread(pool: ThreadPoolExecutor) -> None:
    """Makes PyTorch run single-threaded in pool's thread (one thread), leaving every other thread's count.

    The parser's small matrix products go through torch.mm (kdcvg.text.fast_spacy), which hands them to an
    OpenMP team of one thread per core. Beside a busy encoder that team's second thread has no core to run
    on, and each product waits for the scheduler: in the server a new phrase's parse took 3.4-6.5 ms at p50
    with two threads and 3.1-4.2 ms with one (bench/RESULTS.md). torch.set_num_threads sets the calling thread's
    OpenMP and MKL counts and a process-wide default that threads started later pick up; the default is
    put back at once, from this thread, where the count was that default already."""
    import torch

    def single() -> None:
        torch.get_num_threads()  # a thread's first call sets its counts from the default: done first
        torch.set_num_threads(1)

    default = torch.get_num_threads()
    pool.submit(single).result()
    torch.set_num_threads(default)


def unit_strings(units: Sequence[SemanticUnit]) -> list[str]:
    return [s for u in units for s in (u.motion, u.actor, u.recipient) if s]
