"""The semantic units of every indexed entry, held in memory for ranking.

Ranking a pool of 100 candidates needs each one's units (motion, actor, recipient strings) as vectors.
Reading them from the index's payload store with every search cost 2-5 ms at 100k entries, more than the
vector search itself, so the units live here instead: each distinct unit string once, as a row of one
embedding table, and each entry as the (m, 3) row numbers of its units.

Entries are content-addressed (an id names one video of one tenant, ingested once), so a point id's units
never change and the table is a cache that is never stale: points are added as they are ingested, all of
them are loaded in the background when the server starts (``load``), and a point the table lacks (another
replica ingested it, or loading has not reached it) is read from the index when a search meets it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from kdcvg.retrieval.ranking import PackedUnits
from kdcvg.text.atomizer import SemanticUnit

log = logging.getLogger("kdcvg.retrieval")

Embed = Callable[[list[str]], np.ndarray]
UnitTuple = tuple[str, str, str, bool]  # motion, actor, recipient, core: as stored in an entry's payload


class UnitTable:
    """Thread-safe. ``embed`` turns unit strings into vectors (any scale; rows are L2-normalised here).

    Storage is flat numpy arrays plus one dict of point ids, not an object per entry: 100k entries as
    Python objects made the garbage collector's full passes take a quarter of a second."""

    def __init__(self, embed: Embed, dim: int) -> None:
        self._embed = embed
        self.dim = dim
        self._lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        self._vectors = np.zeros((1024, dim), dtype=np.float32)  # row 0 stays zero: an empty slot
        self._size = 1
        self._slot: dict[str, int] = {}  # point id -> slot
        self._entry_ids: list[str] = []  # by slot
        self._start = np.zeros(1024, dtype=np.int64)  # by slot: first row in _rows
        self._count = np.zeros(1024, dtype=np.int64)  # by slot: its number of units
        self._core = np.zeros(1024, dtype=np.int64)  # by slot: its core unit among them, -1 without units
        self._rows = np.zeros((4096, 3), dtype=np.int32)  # per unit: rows of _vectors for motion/actor/recipient
        self._n_rows = 0
        self.loaded = threading.Event()

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def vocabulary_size(self) -> int:
        return self._size - 1

    def __contains__(self, point_id: str) -> bool:
        return point_id in self._slot

    def missing(self, point_ids: Iterable[str]) -> list[str]:
        slot = self._slot
        return [p for p in point_ids if p not in slot]

    def add(self, items: Sequence[tuple[str, str, Sequence[SemanticUnit] | Sequence[UnitTuple]]]) -> None:
        """(point id, entry id, units) for each point; units as SemanticUnits or payload tuples."""
        parsed = [(pid, eid, [_as_tuple(u) for u in units]) for pid, eid, units in items]
        strings = {s for _, _, units in parsed for u in units for s in u[:3] if s}
        with self._lock:
            new = [s for s in strings if s not in self._vocab]
        if new:
            vectors = np.asarray(self._embed(new), dtype=np.float32)
            if vectors.shape != (len(new), self.dim):
                raise ValueError(f"embed returned shape {vectors.shape} for {len(new)} strings of width {self.dim}")
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        with self._lock:
            if new:  # another thread may have added some of them meanwhile
                fresh = [i for i, s in enumerate(new) if s not in self._vocab]
                self._append_vocab([new[i] for i in fresh], vectors[fresh])
            vocab = self._vocab
            for pid, eid, units in parsed:
                if pid in self._slot:
                    continue  # a point's units never change
                rows = [[vocab[s] if s else 0 for s in u[:3]] for u in units]
                core = next((i for i, u in enumerate(units) if u[3]), 0) if units else -1
                self._append_entry(pid, eid, rows, core)

    def vectors(self, strings: Iterable[str]) -> dict[str, np.ndarray]:
        """The (read-only) vectors of those strings that are in the vocabulary."""
        with self._lock:
            rows = {s: self._vocab[s] for s in strings if s in self._vocab}
            table = self._vectors
        out = {}
        for s, i in rows.items():
            row = table[i].copy()
            row.setflags(write=False)
            out[s] = row
        return out

    def discard(self, point_ids: Iterable[str]) -> None:
        """Forgets points (their rows stay behind unused until the process restarts)."""
        with self._lock:
            for pid in point_ids:
                self._slot.pop(pid, None)

    def pack(self, point_ids: Sequence[str]) -> tuple[PackedUnits, list[str]]:
        """The candidates' units packed for ``rank`` and their entry ids, in the order given. Every point
        must be in the table (see ``missing``)."""
        with self._lock:
            slots = np.fromiter((self._slot[p] for p in point_ids), dtype=np.int64, count=len(point_ids))
            entry_ids = [self._entry_ids[i] for i in slots.tolist()]
            vectors, rows_all = self._vectors, self._rows
            src, count, core = self._start[slots], self._count[slots], self._core[slots]
        start = np.cumsum(count) - count
        # Row j of the packed block comes from rows_all[src[i] + (j - start[i])] for its candidate i.
        gather = np.repeat(src - start, count) + np.arange(int(count.sum()), dtype=np.int64)
        rows = rows_all[gather]
        packed = PackedUnits(
            vectors[rows[:, 0]],
            vectors[rows[:, 1]],
            vectors[rows[:, 2]],
            start,
            count,
            np.where(core >= 0, start + core, -1),
        )
        return packed, entry_ids

    def load(self, scan: Iterable[list[tuple[str, dict]]], key_field: str, units_field: str = "units") -> int:
        """Adds every point a scan of the index yields; returns how many. Sets ``loaded`` at the end."""
        t0, n = time.perf_counter(), 0
        try:
            for page in scan:
                items = [
                    (pid, _entry_id(payload.get(key_field, "")), payload.get(units_field) or [])
                    for pid, payload in page
                    if pid not in self._slot
                ]
                self.add(items)
                n += len(page)
        finally:
            self.loaded.set()
        log.info(
            "unit table loaded",
            extra={"points": n, "strings": self.vocabulary_size, "seconds": round(time.perf_counter() - t0, 2)},
        )
        return n

    def _append_vocab(self, strings: list[str], vectors: np.ndarray) -> None:
        need = self._size + len(strings)
        self._vectors = _room(self._vectors, self._size, need)
        self._vectors[self._size : need] = vectors
        for i, s in enumerate(strings):
            self._vocab[s] = self._size + i
        self._size = need

    def _append_entry(self, point_id: str, entry_id: str, rows: list[list[int]], core: int) -> None:
        slot, m = len(self._entry_ids), len(rows)
        self._start = _room(self._start, slot, slot + 1)
        self._count = _room(self._count, slot, slot + 1)
        self._core = _room(self._core, slot, slot + 1)
        self._rows = _room(self._rows, self._n_rows, self._n_rows + m)
        self._start[slot], self._count[slot], self._core[slot] = self._n_rows, m, core
        if m:
            self._rows[self._n_rows : self._n_rows + m] = rows
        self._n_rows += m
        self._entry_ids.append(entry_id)
        self._slot[point_id] = slot


def _room(array: np.ndarray, used: int, need: int) -> np.ndarray:
    """``array`` with room for ``need`` rows: a new, doubled array when it is full, never a resize in place,
    because pack() may be reading the old one outside the lock."""
    if need <= array.shape[0]:
        return array
    grown = np.zeros((max(need, 2 * array.shape[0]), *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def _as_tuple(unit: SemanticUnit | Sequence) -> UnitTuple:
    if isinstance(unit, SemanticUnit):
        return (unit.motion, unit.actor, unit.recipient, bool(unit.core))
    motion, actor, recipient, core = unit[:4]  # a stored unit may carry more: [..., core, nominal]
    return (str(motion), str(actor), str(recipient), bool(core))


def _entry_id(key: str) -> str:
    """An index key is ``tenant/entry id``."""
    return key.rsplit("/", 1)[-1]
