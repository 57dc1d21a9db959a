"""Search-T2V semantic matching (Sec. 4.2): coarse filtering, then the ranking score of Eq. 6-8.

    Score = sim(total_i, total_P) + F                                                      (6)
    F     = alpha * sim(mot_i,core, mot_P,core) + beta * sim(atr_i,core, atr_P,core) + gamma * sim'   (7)
    sim'  = mean over query units p of max over candidate units s of
            sim(mot_p, mot_s) + sim(atr_p, atr_s) + sim(rec_p, rec_s)                       (8)

Coarse filtering runs in order total -> core motion -> core actor; each stage keeps the candidates at or
above its threshold, and when fewer than keep_top pass, the top keep_top of that stage by that stage's
similarity (a fail-safe, so at least min(keep_top, remaining) survive every stage). Survivors are ordered
by Score, then by total similarity, then by index.

Similarities are cosines. An empty unit slot (no actor, say) is a zero vector, so its similarity to
anything is 0, and so is the similarity of two empty slots: an empty slot never matches, it only fails to
count. A text without units has zero core vectors, and sim' against or from an empty unit list is 0.

Products use einsum, not BLAS matmul: they are small, and a multi-threaded BLAS on a busy machine made
them 20-50x slower (its threads spin for cores that other work holds).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the atomizer module imports spaCy; ranking stays numpy-only
    from kdcvg.text.atomizer import SemanticUnit

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class RankingParams:
    t_total: float = 0.3
    t_mot: float = 0.9
    t_atr: float = 0.4
    keep_top: int = 10
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.5


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    index: int  # position in the candidate arrays given to rank()
    total_similarity: float
    motion_similarity: float  # core units
    actor_similarity: float  # core units
    recipient_similarity: float  # core units
    unit_similarity: float  # sim' of Eq. 8
    unit_score: float  # F of Eq. 7
    score: float  # Eq. 6 (rank_cosine: the total similarity)
    passed_total_threshold: bool
    passed_motion_threshold: bool
    passed_actor_threshold: bool


@dataclass
class UnitVectors:
    """The embedded units of one text. Rows of an empty slot are zero; `present` marks non-empty slots."""

    mot: np.ndarray  # (m, d) float32, rows L2-normalised or zero
    atr: np.ndarray  # (m, d)
    rec: np.ndarray  # (m, d)
    present: np.ndarray  # (m, 3) bool: motion, actor, recipient
    core: int  # index of the core unit, -1 when m == 0

    @property
    def m(self) -> int:
        return int(self.mot.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mot.shape[1])

    @classmethod
    def from_units(cls, units: Sequence[SemanticUnit], embed: Embed, dim: int | None = None) -> UnitVectors:
        """Embeds each distinct non-empty unit string once (one embed call). Without `dim`, a text whose
        slots are all empty gets width-0 arrays, which rank() treats as zero vectors."""
        return embed_unit_lists([units], embed, dim)[0]


def embed_unit_lists(
    unit_lists: Sequence[Sequence[SemanticUnit]], embed: Embed, dim: int | None = None
) -> list[UnitVectors]:
    """UnitVectors for many texts with one embed call over their distinct strings."""
    table, index = _embed_table(unit_lists, embed, dim)
    pad = len(table) - 1  # the zero row
    out = []
    for units in unit_lists:
        rows = _row_indices(units, index, pad)
        mot, atr, rec = (table[rows[:, k]] for k in range(3))
        out.append(UnitVectors(mot, atr, rec, rows != pad, _core_index(units)))
    return out


@dataclass(frozen=True)
class PackedUnits:
    """The units of n candidates stacked; candidate i owns rows start[i] : start[i] + count[i].

    rank() packs a Sequence[UnitVectors] itself; pass PackedUnits to skip that per-call step."""

    mot: np.ndarray  # (M, d) float32
    atr: np.ndarray  # (M, d)
    rec: np.ndarray  # (M, d)
    start: np.ndarray  # (n,) int64
    count: np.ndarray  # (n,) int64
    core: np.ndarray  # (n,) int64: absolute row of each candidate's core unit, -1 without units

    @property
    def n(self) -> int:
        return int(self.start.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mot.shape[1])

    @classmethod
    def from_unit_vectors(cls, cand: Sequence[UnitVectors], dim: int | None = None) -> PackedUnits:
        d = dim if dim is not None else max((u.dim for u in cand if u.present.any()), default=0)
        count = np.array([u.m for u in cand], dtype=np.int64)
        start = _starts(count)
        slots: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for u in cand:
            if u.m == 0:
                continue
            if u.dim != d:
                if u.present.any():
                    raise ValueError(f"unit vectors of width {u.dim} among width {d}")
                zero = np.zeros((u.m, d), dtype=np.float32)  # a text whose slots are all empty
                u = UnitVectors(zero, zero, zero, u.present, u.core)
            for slot, rows in zip(slots, (u.mot, u.atr, u.rec), strict=True):
                slot.append(rows)
        mot, atr, rec = (
            np.concatenate(slot).astype(np.float32, copy=False) if slot else np.zeros((0, d), np.float32)
            for slot in slots
        )
        cores = [s + u.core if u.core >= 0 and u.m else -1 for s, u in zip(start.tolist(), cand, strict=True)]
        return cls(mot, atr, rec, start, count, np.array(cores, np.int64))

    @classmethod
    def from_units(
        cls, unit_lists: Sequence[Sequence[SemanticUnit]], embed: Embed, dim: int | None = None
    ) -> PackedUnits:
        """Packs the units of many texts straight from SemanticUnits, with one embed call."""
        table, index = _embed_table(unit_lists, embed, dim)
        count = np.array([len(u) for u in unit_lists], dtype=np.int64)
        start = _starts(count)
        rows = _row_indices([u for units in unit_lists for u in units], index, len(table) - 1)
        cores = [_core_index(units) for units in unit_lists]
        core = np.array([s + c if c >= 0 else -1 for s, c in zip(start.tolist(), cores, strict=True)], np.int64)
        return cls(table[rows[:, 0]], table[rows[:, 1]], table[rows[:, 2]], start, count, core)


def rank(
    query_units: UnitVectors,
    cand_total: np.ndarray,
    cand_units: Sequence[UnitVectors] | PackedUnits,
    params: RankingParams | None = None,
    *,
    query_total: np.ndarray | None = None,
    limit: int | None = None,
) -> list[RankedCandidate]:
    """Search-T2V: coarse filtering, then survivors by Eq. 6, best first.

    cand_total is either the candidates' total similarities, shape (n,) (e.g. the cosines a vector index
    returned), or their total vectors, shape (n, d), compared with `query_total` (d,)."""
    p = params or RankingParams()
    parts = _score_parts(query_units, cand_total, cand_units, p, query_total)
    total, mot, atr = parts.total, parts.parts[:, 0], parts.parts[:, 1]
    alive = np.arange(total.shape[0])
    for sim, threshold in ((total, p.t_total), (mot, p.t_mot), (atr, p.t_atr)):
        alive = _coarse_filter(alive, sim, threshold, p.keep_top)
    order = np.lexsort((alive, -total[alive], -parts.score[alive]))
    return parts.ranked(alive[order][:limit], parts.score)


def rank_cosine(
    cand_total: np.ndarray,
    *,
    query_total: np.ndarray | None = None,
    query_units: UnitVectors | None = None,
    cand_units: Sequence[UnitVectors] | PackedUnits | None = None,
    params: RankingParams | None = None,
    limit: int | None = None,
) -> list[RankedCandidate]:
    """The plain-cosine baseline: every candidate by total similarity (score = total similarity), no
    filtering. Unit parts are filled in when units are given, for comparison; else they are 0."""
    p = params or RankingParams()
    if query_units is not None and cand_units is not None:
        parts = _score_parts(query_units, cand_total, cand_units, p, query_total)
    else:
        total = _total_similarity(cand_total, query_total)
        zeros = np.zeros(total.shape[0])
        parts = _Parts(total, np.zeros((total.shape[0], 3)), zeros, zeros, total, p)
    order = np.lexsort((np.arange(parts.total.shape[0]), -parts.total))
    return parts.ranked(order[:limit], parts.total)


class UnitEmbeddingCache:
    """Memoises an embed callable per string (bounded LRU): unit strings (verb lemmas, nouns) repeat
    across the knowledge base, so most lookups are hits.

    embed(texts) encodes only the distinct misses, in one call. Thread-safe; the wrapped callable runs
    outside the lock, so two threads that miss the same string at once may both encode it (same result).

    ``known`` (optional) answers misses from vectors computed elsewhere before anything is encoded: the
    knowledge base's unit table already holds most strings a query's units can have, and encoding a
    query's new unit strings would otherwise cost a second encoder call per search."""

    def __init__(
        self, embed: Embed, maxsize: int = 32768, known: Callable[[list[str]], dict[str, np.ndarray]] | None = None
    ) -> None:
        self._embed = embed
        self._known = known
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dim: int | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        found = self.lookup(texts)
        misses = [t for t in dict.fromkeys(texts) if t not in found]
        if misses and self._known is not None:
            elsewhere = self._known(misses)
            found.update(elsewhere)
            misses = [t for t in misses if t not in elsewhere]
        if misses:
            found.update(self.store(misses, self._embed(misses)))
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``texts`` (marked recently used); never embeds anything."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in dict.fromkeys(texts):
                row = self._rows.get(t)
                if row is not None:
                    self._rows.move_to_end(t)
                    found[t] = row
            self.hits += sum(1 for t in texts if t in found)
            self.misses += sum(1 for t in texts if t not in found)
        return found

    def store(self, texts: Sequence[str], vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Caches ``vectors`` (one row per text, embedded elsewhere); returns them by text, read-only."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise ValueError(f"embed returned shape {vecs.shape} for {len(texts)} strings")
        out: dict[str, np.ndarray] = {}
        with self._lock:
            self._dim = int(vecs.shape[1])
            for t, v in zip(texts, vecs, strict=True):
                row = v.copy()
                row.setflags(write=False)
                out[t] = self._rows[t] = row
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)
        return out

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


# --- internals -------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    total: np.ndarray  # (n,) float64
    parts: np.ndarray  # (n, 3) float64: core motion, actor, recipient similarity
    unit_sim: np.ndarray  # (n,) sim'
    unit_score: np.ndarray  # (n,) F
    score: np.ndarray  # (n,) Eq. 6
    params: RankingParams

    def ranked(self, indices: np.ndarray, score: np.ndarray) -> list[RankedCandidate]:
        p = self.params
        rows = zip(
            indices.tolist(),
            self.total[indices].tolist(),
            self.parts[indices].tolist(),
            self.unit_sim[indices].tolist(),
            self.unit_score[indices].tolist(),
            score[indices].tolist(),
            strict=True,
        )
        return [
            RankedCandidate(i, t, m, a, r, s1, f, s, t >= p.t_total, m >= p.t_mot, a >= p.t_atr)
            for i, t, (m, a, r), s1, f, s in rows
        ]


def _score_parts(
    query: UnitVectors,
    cand_total: np.ndarray,
    cand_units: Sequence[UnitVectors] | PackedUnits,
    p: RankingParams,
    query_total: np.ndarray | None,
) -> _Parts:
    total = _total_similarity(cand_total, query_total)
    n = total.shape[0]
    query_live = bool(query.present.any())
    if isinstance(cand_units, PackedUnits):
        packed = cand_units
    else:
        packed = PackedUnits.from_unit_vectors(cand_units, query.dim if query_live else None)
    if packed.n != n:
        raise ValueError(f"{n} candidate totals but {packed.n} candidate unit sets")
    parts = np.zeros((n, 3))
    unit_sim = np.zeros(n)
    # Without a non-empty slot on either side every unit similarity is 0 (empty slots are zero vectors).
    if query_live and packed.mot.shape[0] > 0 and packed.dim > 0:
        if packed.dim != query.dim:
            raise ValueError(f"query unit width {query.dim} != candidate unit width {packed.dim}")
        slots = ((query.mot, packed.mot), (query.atr, packed.atr), (query.rec, packed.rec))
        if query.core >= 0:
            # The query core against each candidate core, slot by slot.
            core_rows = np.where(packed.core >= 0, packed.core, 0)
            for k, (q, c) in enumerate(slots):
                parts[:, k] = np.einsum("nd,d->n", c[core_rows], q[query.core])
            parts[packed.core < 0] = 0.0
        # Eq. 8: for every (query unit, candidate unit) pair, the sum of the three slot similarities.
        pair = sum(np.einsum("qd,md->qm", q, c) for q, c in slots)  # (mq, M)
        has = packed.count > 0
        best = np.zeros((query.m, n))
        if has.any():
            # Rows are grouped by candidate; candidates without units own no rows and keep 0.
            best[:, has] = np.maximum.reduceat(pair, packed.start[has], axis=1)
        unit_sim = best.mean(axis=0)
    unit_score = p.alpha * parts[:, 0] + p.beta * parts[:, 1] + p.gamma * unit_sim
    return _Parts(total, parts, unit_sim, unit_score, total + unit_score, p)


def _total_similarity(cand_total: np.ndarray, query_total: np.ndarray | None) -> np.ndarray:
    cand_total = np.asarray(cand_total)
    if cand_total.ndim == 1:
        if query_total is not None:
            raise ValueError("cand_total holds similarities (n,); query_total is only for vectors (n, d)")
        return cand_total.astype(np.float64)
    if query_total is None:
        raise ValueError("cand_total holds vectors (n, d): pass query_total (d,)")
    q = np.asarray(query_total, dtype=np.float32)
    c = cand_total.astype(np.float32, copy=False)
    sims = np.einsum("nd,d->n", c, q).astype(np.float64)
    norms = np.linalg.norm(c, axis=1).astype(np.float64) * float(np.linalg.norm(q))
    return np.divide(sims, norms, out=np.zeros_like(sims), where=norms > 0)


def _coarse_filter(alive: np.ndarray, sim: np.ndarray, threshold: float, keep_top: int) -> np.ndarray:
    passed = alive[sim[alive] >= threshold]
    if passed.size >= keep_top:
        return passed
    # Fail-safe: the top keep_top by this stage's similarity (they include everything that passed).
    best = np.argsort(-sim[alive], kind="stable")[:keep_top]
    return np.sort(alive[best])


def _embed_table(
    unit_lists: Sequence[Sequence[SemanticUnit]], embed: Embed, dim: int | None
) -> tuple[np.ndarray, dict[str, int]]:
    """Row per distinct string (in first-seen order), L2-normalised, plus a final zero row."""
    strings = list(
        dict.fromkeys(s for units in unit_lists for u in units for s in (u.motion, u.actor, u.recipient) if s)
    )
    if strings:
        vecs = np.asarray(embed(strings), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(strings):
            raise ValueError(f"embed returned shape {vecs.shape} for {len(strings)} strings")
        if dim is not None and vecs.shape[1] != dim:
            raise ValueError(f"embed returned width {vecs.shape[1]}, expected {dim}")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
    else:
        vecs = np.zeros((0, dim or 0), dtype=np.float32)
    table = np.concatenate([vecs, np.zeros((1, vecs.shape[1]), dtype=np.float32)])
    return table, {s: i for i, s in enumerate(strings)}


def _row_indices(units: Sequence[SemanticUnit], index: dict[str, int], pad: int) -> np.ndarray:
    """(m, 3) rows into the embed table; empty slots point at the zero row `pad`."""
    rows = [[index[s] if s else pad for s in (u.motion, u.actor, u.recipient)] for u in units]
    return np.array(rows, dtype=np.int64).reshape(len(units), 3)


def _core_index(units: Sequence[SemanticUnit]) -> int:
    """The first unit flagged core; the first unit when none is flagged; -1 without units."""
    if not units:
        return -1
    return next((i for i, u in enumerate(units) if u.core), 0)


def _starts(count: np.ndarray) -> np.ndarray:
    return (np.cumsum(count) - count).astype(np.int64)
