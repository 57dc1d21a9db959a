"""The knowledge base's vector index: one interface, two backends.

- ``EdgeIndex``: the Qdrant engine in-process (qdrant-edge-py), persisted in a data dir. The default.
- ``QdrantServerIndex``: a Qdrant server or cluster through qdrant-client. Production.

Every point belongs to one tenant (``payload["tenant"]``); every read and delete is filtered on it, and the
Qdrant point id is derived from (tenant, key), so no call made for one tenant can see, overwrite or delete
another tenant's points.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client import models as qm

log = logging.getLogger(__name__)

# Reserved payload field holding the caller's key; the Qdrant point id is a hash of it.
KEY_FIELD = "_key"
TENANT_FIELD = "tenant"
CATEGORY_FIELD = "category"
_ID_NAMESPACE = uuid.UUID("3f6b7d0e-5c1a-4f43-9a57-6a0d2b1c9e11")


@dataclass
class IndexPoint:
    """One knowledge-base entry: ``id`` is the caller's key (e.g. ``f"{tenant}/{sha256}"``)."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass
class Hit:
    """A search result (cosine similarity in ``score``) or a retrieved point (``score`` 0.0)."""

    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph and search parameters.

    Defaults from bench/index_recall.py on 10k-100k MiniLM embeddings of ad copy: m=16, ef_construct=100
    and ef=48 give recall@10 of 0.994-0.996 at 0.2-0.6 ms; ef=32 is only just at 0.98 at 20k, and a larger
    m or ef_construct bought no recall. Qdrant searches with max(ef, limit), so ef only matters for small
    limits. ``full_scan_threshold_kb``: a filtered search whose matching vectors total less than this is
    answered exactly from the payload index (small tenants always get exact results).
    ``indexing_threshold``: unindexed points (searched exactly, ~1 ms per 10k) that make EdgeIndex build
    HNSW for them in the background.
    """

    m: int = 16
    ef_construct: int = 100
    ef: int = 48
    full_scan_threshold_kb: int = 10_000
    indexing_threshold: int = 10_000


class VectorIndex(Protocol):
    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def search(
        self,
        vector: np.ndarray,
        *,
        tenant: str,
        category: str | None,
        limit: int,
        exact: bool = False,
        payload_fields: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Nearest points of one tenant (and category). ``payload_fields`` limits the payload returned to
        those fields (cheaper for large candidate pools); None returns all of it."""
        ...

    def nearest(self, vector: np.ndarray, *, tenant: str, category: str | None, limit: int) -> list[tuple[str, float]]:
        """Like ``search`` without any payload: (point id, cosine) pairs, best first. Reading payloads is
        most of the cost of a large candidate pool; callers that keep what they need in memory use this."""
        ...

    def payloads(self, point_ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The named payload fields of points by point id (of any tenant; for internal caches only)."""
        ...

    def scan(self, fields: Sequence[str], *, batch: int = 2000) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Every point of every tenant as (point id, the named payload fields), a page at a time."""
        ...

    def retrieve(self, ids: Sequence[str], *, tenant: str) -> list[Hit]: ...

    def scroll(
        self, tenant: str, *, category: str | None = None, limit: int, offset: str | None = None
    ) -> tuple[list[Hit], str | None]:
        """One page of a tenant's points (and category) with their whole payload, ordered by Qdrant point id,
        which is stable. ``offset``: None for the first page, then the ``next_offset`` the previous page
        returned (a point id, inclusive). Returns the page and the next offset, None after the last page."""
        ...

    def delete(self, ids: Sequence[str], *, tenant: str) -> None: ...

    def set_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Sets those payload fields (others stay) on the points by point id that still exist (of any
        tenant; for internal migrations only)."""
        ...

    def count(self, tenant: str | None = None) -> int: ...

    def optimize(self) -> None: ...

    def close(self) -> None: ...


def point_uuid(tenant: str, key: str) -> str:
    """The Qdrant point id of ``key`` within ``tenant`` (uuid5, stable across runs and backends)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{tenant}\x1f{key}"))


def _prepare(point: IndexPoint, dim: int) -> tuple[str, list[float], dict[str, Any]]:
    payload = dict(point.payload)
    tenant = payload.get(TENANT_FIELD)
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"point {point.id!r}: payload needs a non-empty str 'tenant'")
    if not isinstance(payload.get(CATEGORY_FIELD), str):
        raise ValueError(f"point {point.id!r}: payload needs a str 'category'")
    payload[KEY_FIELD] = point.id
    return point_uuid(tenant, point.id), _vector(point.vector, dim), payload


def _vector(vector: np.ndarray, dim: int) -> list[float]:
    v = np.asarray(vector, dtype=np.float32)
    if v.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {v.shape}")
    if not np.isfinite(v).all() or not np.any(v):
        raise ValueError("vector must be finite and non-zero")
    return v.tolist()


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty str")


def _hit(stored: dict[str, Any] | None, score: float) -> Hit:
    payload = dict(stored or {})
    return Hit(id=str(payload.pop(KEY_FIELD, "")), score=float(score), payload=payload)


def _scroll_args(tenant: str, limit: int, offset: str | None) -> str | None:
    """Checks a scroll's arguments; returns ``offset`` in canonical form (a point id is a UUID)."""
    _check_tenant(tenant)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if offset is None:
        return None
    try:
        return str(uuid.UUID(offset))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"offset {offset!r} is not a point id (a UUID)") from None


def _page(records: Sequence[Any], next_offset: object, tenant: str) -> tuple[list[Hit], str | None]:
    hits = [_hit(r.payload, 0.0) for r in records if (r.payload or {}).get(TENANT_FIELD) == tenant]
    return hits, None if next_offset is None else str(next_offset)


def _in_order(ids: Sequence[str], hits: list[Hit]) -> list[Hit]:
    by_id = {h.id: h for h in hits}
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]


# ---------------------------------------------------------------------------------------------------------
# Embedded backend
# ---------------------------------------------------------------------------------------------------------

_CURRENT = "CURRENT"
_LOCK = ".lock"
_SHARD_PREFIX = "shard-"
_NOTHING_TO_DO = 3  # exit status of the optimiser process when the shard was already optimal


class _QueryReads:
    """search and nearest for a backend whose ``_query`` returns scored points (``.id``, ``.score``,
    ``.payload``): both Qdrant engines answer in that shape. Subclasses define ``_query``."""

    # (vector, tenant, category, limit, exact, with_payload) -> scored points
    _query: Callable[[np.ndarray, str, str | None, int, bool, bool | list[str]], list[Any]]

    def search(
        self,
        vector: np.ndarray,
        *,
        tenant: str,
        category: str | None,
        limit: int,
        exact: bool = False,
        payload_fields: Sequence[str] | None = None,
    ) -> list[Hit]:
        with_payload = True if payload_fields is None else [KEY_FIELD, *payload_fields]
        return [_hit(p.payload, p.score) for p in self._query(vector, tenant, category, limit, exact, with_payload)]

    def nearest(self, vector: np.ndarray, *, tenant: str, category: str | None, limit: int) -> list[tuple[str, float]]:
        return [(str(p.id), float(p.score)) for p in self._query(vector, tenant, category, limit, False, False)]


class _ReadWriteLock:
    """Many concurrent readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class EdgeIndex(_QueryReads):
    """Qdrant's engine in-process, persisted under ``path``.

    Durability: every update is in the engine's write-ahead log before ``upsert``/``delete`` returns, so
    it survives the process being killed; with ``fsync=True`` (default) ``EdgeShard.flush()`` also fsyncs
    it, so it survives the machine losing power (about 30 ms per call at 100k points).

    Indexing: new points land in a plain segment that is searched exactly. HNSW is built by
    ``EdgeShard.optimize()``, which holds the GIL for its whole run (seconds to minutes) and would freeze
    every thread of a server. So it runs in a child process on a copy of the shard while this process
    keeps serving the old one; updates made meanwhile are replayed onto the optimised copy, which then
    replaces the old shard (the ``CURRENT`` file names the live one, switched atomically). With
    ``auto_optimize`` a rebuild starts by itself once ``hnsw.indexing_threshold`` points are unindexed.
    """

    def __init__(
        self,
        path: Path,
        *,
        dim: int = 384,
        hnsw: HnswParams = HnswParams(),
        auto_optimize: bool = True,
        fsync: bool = True,
        optimizer_nice: int = 10,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.hnsw = hnsw
        self.search_ef = hnsw.ef
        self.fsync = fsync
        self.auto_optimize = auto_optimize
        self.optimizer_nice = optimizer_nice
        self.path.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path / _LOCK, "a")  # flock'ed for the index's lifetime
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise RuntimeError(f"index at {self.path} is open in another process") from None

        self._shard_lock = _ReadWriteLock()  # write mode only to swap or close the shard object
        self._update_lock = threading.Lock()  # serialises updates, snapshots and the journal
        self._journal: list[qe.UpdateOperation] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._closed = False
        # Rebuild requests, served by one long-lived worker thread (see _work).
        self._cv = threading.Condition()
        self._requested = 0
        self._completed = 0
        self._failure: BaseException | None = None
        self._auto_pending = False
        self._auto_paused_until = 0.0
        self._worker: threading.Thread | None = None
        try:
            self._shard_dir, self._shard = self._open_current()
        except BaseException:
            self._lockfile.close()
            raise
        self._maybe_auto_optimize()  # e.g. a rebuild that a crash interrupted

    # -- lifecycle ----------------------------------------------------------------------------------------

    def _config(self) -> qe.EdgeConfig:
        threshold_kb = max(1, math.ceil(self.hnsw.indexing_threshold * self.dim * 4 / 1024))
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw.m,
                ef_construct=self.hnsw.ef_construct,
                full_scan_threshold=self.hnsw.full_scan_threshold_kb,
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb),
        )

    def _open_current(self) -> tuple[Path, qe.EdgeShard]:
        current = self.path / _CURRENT
        name = current.read_text().strip() if current.exists() else None
        # Leftovers of a rebuild (or a first create) that died before CURRENT named it.
        for stale in self.path.glob(f"{_SHARD_PREFIX}*"):
            if stale.name != name:
                shutil.rmtree(stale, ignore_errors=True)
        if name is None:
            shard_dir = self.path / f"{_SHARD_PREFIX}000000"
            shard = qe.EdgeShard.create(str(shard_dir), self._config())
            self._ensure_payload_indexes(shard)
            shard.flush()
            _fsync_tree(shard_dir)
            _write_current(self.path, shard_dir.name)
            _fsync_dir(self.path)
            return shard_dir, shard
        shard_dir = self.path / name
        shard = qe.EdgeShard.load(str(shard_dir), self._config())
        self._ensure_payload_indexes(shard)
        return shard_dir, shard

    @staticmethod
    def _ensure_payload_indexes(shard: qe.EdgeShard) -> None:
        schema = shard.info().payload_schema
        if TENANT_FIELD not in schema:
            shard.update(qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)))
        if CATEGORY_FIELD not in schema:
            shard.update(qe.UpdateOperation.create_field_index(CATEGORY_FIELD, qe.PayloadSchemaType.Keyword))

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            if self._child is not None and self._child.poll() is None:
                self._child.kill()
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join()
        with self._update_lock, self._shard_lock.write():
            self._shard.close()
        self._lockfile.close()

    def __enter__(self) -> EdgeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads --------------------------------------------------------------------------------------------

    def _query(
        self,
        vector: np.ndarray,
        tenant: str,
        category: str | None,
        limit: int,
        exact: bool,
        with_payload: bool | list[str],
    ) -> list[Any]:
        _check_tenant(tenant)
        if limit <= 0:
            return []
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(_vector(vector, self.dim)),
            filter=_edge_filter(tenant, category),
            with_payload=with_payload,
            params=qe.SearchParams(hnsw_ef=self.search_ef, exact=exact),
        )
        with self._shard_lock.read():
            return self._shard.query(request)

    def payloads(self, point_ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        with self._shard_lock.read():
            records = self._shard.retrieve([uuid.UUID(i) for i in point_ids], list(fields), False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def scan(self, fields: Sequence[str], *, batch: int = 2000) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        offset = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=batch, with_payload=list(fields), with_vector=False)
            with self._shard_lock.read():
                records, offset = self._shard.scroll(request)
            yield [(str(r.id), dict(r.payload or {})) for r in records]
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str], *, tenant: str) -> list[Hit]:
        _check_tenant(tenant)
        if not ids:
            return []
        uuids = [point_uuid(tenant, i) for i in ids]
        with self._shard_lock.read():
            # with_payload / with_vector must be positional in qdrant-edge-py 0.9.
            records = self._shard.retrieve(uuids, True, False)
        hits = [_hit(r.payload, 0.0) for r in records if (r.payload or {}).get(TENANT_FIELD) == tenant]
        return _in_order(ids, hits)

    def scroll(
        self, tenant: str, *, category: str | None = None, limit: int, offset: str | None = None
    ) -> tuple[list[Hit], str | None]:
        offset = _scroll_args(tenant, limit, offset)
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_edge_filter(tenant, category),
            with_payload=True,
            with_vector=False,
        )
        with self._shard_lock.read():
            records, next_offset = self._shard.scroll(request)
        return _page(records, next_offset, tenant)

    def count(self, tenant: str | None = None) -> int:
        flt = None if tenant is None else qe.Filter(must=[_edge_match(TENANT_FIELD, tenant)])
        with self._shard_lock.read():
            return self._shard.count(qe.CountRequest(exact=True, filter=flt))

    # -- writes -------------------------------------------------------------------------------------------

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        prepared = [_prepare(p, self.dim) for p in points]
        self._apply(qe.UpdateOperation.upsert_points([qe.Point(*p) for p in prepared]))

    def delete(self, ids: Sequence[str], *, tenant: str) -> None:
        _check_tenant(tenant)
        if not ids:
            return
        uuids = {point_uuid(tenant, i) for i in ids}
        flt = qe.Filter(must=[qe.HasIdCondition(uuids), _edge_match(TENANT_FIELD, tenant)])
        self._apply(qe.UpdateOperation.delete_points_by_filter(flt))

    def set_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        if not point_ids:
            return
        # By filter: a point deleted meanwhile is no error.
        flt = qe.Filter(must=[qe.HasIdCondition(set(point_ids))])
        self._apply(qe.UpdateOperation.set_payload_by_filter(flt, payload))

    def _apply(self, op: qe.UpdateOperation) -> None:
        with self._update_lock:
            if self._closed:
                raise RuntimeError("index is closed")
            with self._shard_lock.read():
                self._shard.update(op)
                if self.fsync:
                    self._shard.flush()
            if self._journal is not None:
                self._journal.append(op)
        self._maybe_auto_optimize()

    def _maybe_auto_optimize(self) -> None:
        if self.auto_optimize and self.unindexed() >= self.hnsw.indexing_threshold:
            with self._cv:
                if time.monotonic() >= self._auto_paused_until:
                    self._auto_pending = True
                    self._start_worker()
                    self._cv.notify_all()

    # -- indexing -----------------------------------------------------------------------------------------

    def unindexed(self) -> int:
        """Points searched exactly because no HNSW graph covers them yet."""
        with self._shard_lock.read():
            info = self._shard.info()
        return max(0, info.points_count - info.indexed_vectors_count)

    def optimize(self) -> None:
        """Build HNSW where the engine's thresholds call for it. Blocks the caller, never the server."""
        with self._cv:
            if self._closed:
                raise RuntimeError("index is closed")
            self._requested += 1
            target = self._requested
            self._start_worker()
            self._cv.notify_all()
            while self._completed < target and not self._closed:
                self._cv.wait()
            if self._completed < target:
                raise RuntimeError("index closed during optimisation")
            if self._failure is not None:
                raise RuntimeError("index optimisation failed") from self._failure

    def _start_worker(self) -> None:
        # Called with self._cv held.
        if self._worker is None and not self._closed:
            self._worker = threading.Thread(target=self._work, name="kdcvg-index-optimizer", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        # The optimiser child is tied to this thread's life (PR_SET_PDEATHSIG), so only this thread spawns it.
        while True:
            with self._cv:
                while not self._closed and self._completed == self._requested and not self._auto_pending:
                    self._cv.wait()
                if self._closed:
                    return
                target, auto = self._requested, self._auto_pending
                self._auto_pending = False
            failure, changed = None, False
            try:
                if target > self._completed or self.unindexed() >= self.hnsw.indexing_threshold:
                    changed = self._rebuild()
            except Exception as exc:
                failure = exc
                if not self._closed:
                    log.exception("index optimisation failed; serving the unoptimised index")
            with self._cv:
                self._completed = target
                self._failure = failure
                if auto and not changed:
                    # Failed, or the engine saw nothing to index: don't retry on every write.
                    self._auto_paused_until = time.monotonic() + 60.0
                self._cv.notify_all()

    def _rebuild(self) -> bool:
        t0 = time.perf_counter()
        with self._update_lock:
            with self._shard_lock.read():
                self._shard.flush()
            gen = int(self._shard_dir.name.removeprefix(_SHARD_PREFIX)) + 1
            new_dir = self.path / f"{_SHARD_PREFIX}{gen:06d}"
            shutil.rmtree(new_dir, ignore_errors=True)
            # Reads go on meanwhile; updates wait so the copy and the journal start at the same op.
            shutil.copytree(self._shard_dir, new_dir, copy_function=_copy_sparse)
            self._journal = []
        t1 = time.perf_counter()
        try:
            changed = self._optimize_out_of_process(new_dir)
            if changed:
                _fsync_tree(new_dir)
        except BaseException:
            with self._update_lock:
                self._journal = None
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        if not changed:
            with self._update_lock:
                self._journal = None
            shutil.rmtree(new_dir, ignore_errors=True)
            return False
        t2 = time.perf_counter()
        shard = None
        try:
            shard = qe.EdgeShard.load(str(new_dir), self._config())
            with self._update_lock:
                journal, self._journal = self._journal or [], None
                for op in journal:
                    shard.update(op)
                shard.flush()
                _write_current(self.path, new_dir.name)  # the commit point: atomic, nothing after it raises
                with self._shard_lock.write():
                    old_shard, old_dir = self._shard, self._shard_dir
                    self._shard, self._shard_dir = shard, new_dir
        except BaseException:
            with self._update_lock:
                self._journal = None
            if shard is not None:
                with contextlib.suppress(Exception):
                    shard.close()
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        old_shard.close()
        t3 = time.perf_counter()
        try:
            _fsync_dir(self.path)  # CURRENT's rename must be durable before the old shard goes
            shutil.rmtree(old_dir, ignore_errors=True)
        except OSError:
            log.exception("could not sync %s; keeping %s", self.path, old_dir)
        log.info(
            "index optimised: %s -> %s (copy %.2f s, optimise %.2f s, swap %.2f s)",
            old_dir.name,
            new_dir.name,
            t1 - t0,
            t2 - t1,
            t3 - t2,
        )
        return True

    def _optimize_out_of_process(self, shard_dir: Path) -> bool:
        with self._cv:
            if self._closed:
                raise RuntimeError("index closed during optimisation")
            cmd = [sys.executable, "-c", _OPTIMIZE_CHILD, str(shard_dir), str(self.optimizer_nice), str(os.getpid())]
            child = self._child = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        try:
            _, err = child.communicate()
        finally:
            with self._cv:
                self._child = None
        if self._closed:
            raise RuntimeError("index closed during optimisation")
        if child.returncode not in (0, _NOTHING_TO_DO):
            tail = err.decode(errors="replace")[-2000:]
            raise RuntimeError(f"optimiser exited with {child.returncode}: {tail}")
        return child.returncode == 0


# The child imports only the engine (kdcvg's imports cost seconds) and, niced, yields the CPU to the server.
_OPTIMIZE_CHILD = f"""
import ctypes, os, signal, sys
try:  # die with the parent: a killed server must not leave an optimiser writing into its data dir
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[3]):  # the parent died before prctl
    sys.exit(1)
import qdrant_edge
os.nice(int(sys.argv[2]))
shard = qdrant_edge.EdgeShard.load(sys.argv[1])
changed = shard.optimize()
shard.close()
sys.exit(0 if changed else {_NOTHING_TO_DO})
"""


def _copy_sparse(src: str, dst: str) -> None:
    """Copy only the data regions of ``src``: the engine's WAL files are mostly preallocated holes."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        try:
            while pos < size:
                try:
                    start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                except OSError:  # ENXIO: nothing but a hole up to the end
                    break
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                os.lseek(fout.fileno(), start, os.SEEK_SET)
                while start < end:
                    sent = os.sendfile(fout.fileno(), fin.fileno(), start, end - start)
                    if sent == 0:
                        break
                    start += sent
                pos = end
        except (AttributeError, OSError):  # no SEEK_DATA / sendfile for files here: plain copy
            fin.seek(0)
            fout.seek(0)
            shutil.copyfileobj(fin, fout)
        fout.truncate(size)


def _write_current(root: Path, name: str) -> None:
    tmp = root / f"{_CURRENT}.tmp"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / _CURRENT)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _edge_match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def _edge_filter(tenant: str, category: str | None) -> qe.Filter:
    must = [_edge_match(TENANT_FIELD, tenant)]
    if category is not None:
        must.append(_edge_match(CATEGORY_FIELD, category))
    return qe.Filter(must=must)


# ---------------------------------------------------------------------------------------------------------
# Server backend
# ---------------------------------------------------------------------------------------------------------


class QdrantServerIndex(_QueryReads):
    """A collection on a Qdrant server (or qdrant-client's local mode, which takes the same calls).

    The collection is created if missing (cosine, ``dim``, HNSW from ``hnsw``, keyword payload indexes on
    tenant and category). Writes use ``wait=True``: they are applied and in the server's WAL on return.
    The index owns ``client`` and closes it.
    """

    _UPSERT_BATCH = 256

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        dim: int = 384,
        hnsw: HnswParams = HnswParams(),
    ) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self.hnsw = hnsw
        self.search_ef = hnsw.ef
        # qdrant-client's local mode searches exactly and has no payload indexes; it warns about both.
        self._local = type(client._client).__name__ == "QdrantLocal"
        self._ensure_collection()

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None = None,
        collection: str = "kdcvg",
        *,
        dim: int = 384,
        hnsw: HnswParams = HnswParams(),
        prefer_grpc: bool = False,
        timeout_s: int = 10,
    ) -> QdrantServerIndex:
        """``url``: ``http(s)://host:6333``, or ``:memory:`` for qdrant-client's in-process local mode."""
        client = QdrantClient(location=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout_s)
        return cls(client, collection, dim=dim, hnsw=hnsw)

    def _ensure_collection(self) -> None:
        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config=qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE),
                    hnsw_config=qm.HnswConfigDiff(
                        m=self.hnsw.m,
                        ef_construct=self.hnsw.ef_construct,
                        full_scan_threshold=self.hnsw.full_scan_threshold_kb,
                    ),
                )
            except Exception:
                # Another replica may have created it between the check and the create.
                if not self.client.collection_exists(self.collection):
                    raise
        params = self.client.get_collection(self.collection).config.params.vectors
        size = params.size if isinstance(params, qm.VectorParams) else None
        if size != self.dim:
            raise ValueError(f"collection {self.collection!r} has vectors of size {size}, not {self.dim}")
        if not self._local:  # idempotent on a server
            self.client.create_payload_index(
                self.collection,
                TENANT_FIELD,
                qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True),
                wait=True,
            )
            self.client.create_payload_index(self.collection, CATEGORY_FIELD, qm.PayloadSchemaType.KEYWORD, wait=True)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        prepared = (_prepare(p, self.dim) for p in points)
        structs = [qm.PointStruct(id=uid, vector=vec, payload=payload) for uid, vec, payload in prepared]
        for start in range(0, len(structs), self._UPSERT_BATCH):
            self.client.upsert(self.collection, structs[start : start + self._UPSERT_BATCH], wait=True)

    def _query(
        self,
        vector: np.ndarray,
        tenant: str,
        category: str | None,
        limit: int,
        exact: bool,
        with_payload: bool | list[str],
    ) -> list[Any]:
        _check_tenant(tenant)
        if limit <= 0:
            return []
        result = self.client.query_points(
            self.collection,
            query=_vector(vector, self.dim),
            query_filter=_server_filter(tenant, category),
            search_params=None if self._local else qm.SearchParams(hnsw_ef=self.search_ef, exact=exact),
            limit=limit,
            with_payload=with_payload,
        )
        return list(result.points)

    def payloads(self, point_ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        records = self.client.retrieve(self.collection, list(point_ids), with_payload=list(fields))
        return {str(r.id): dict(r.payload or {}) for r in records}

    def scan(self, fields: Sequence[str], *, batch: int = 2000) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=batch, offset=offset, with_payload=list(fields), with_vectors=False
            )
            yield [(str(r.id), dict(r.payload or {})) for r in records]
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str], *, tenant: str) -> list[Hit]:
        _check_tenant(tenant)
        if not ids:
            return []
        uuids = [point_uuid(tenant, i) for i in ids]
        records = self.client.retrieve(self.collection, uuids, with_payload=True)
        hits = [_hit(r.payload, 0.0) for r in records if (r.payload or {}).get(TENANT_FIELD) == tenant]
        return _in_order(ids, hits)

    def scroll(
        self, tenant: str, *, category: str | None = None, limit: int, offset: str | None = None
    ) -> tuple[list[Hit], str | None]:
        offset = _scroll_args(tenant, limit, offset)
        records, next_offset = self.client.scroll(
            self.collection,
            scroll_filter=_server_filter(tenant, category),
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=False,
        )
        return _page(records, next_offset, tenant)

    def delete(self, ids: Sequence[str], *, tenant: str) -> None:
        _check_tenant(tenant)
        if not ids:
            return
        flt = qm.Filter(
            must=[
                qm.HasIdCondition(has_id=[point_uuid(tenant, i) for i in ids]),
                _server_match(TENANT_FIELD, tenant),
            ]
        )
        self.client.delete(self.collection, qm.FilterSelector(filter=flt), wait=True)

    def set_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        if not point_ids:
            return
        flt = qm.Filter(must=[qm.HasIdCondition(has_id=list(point_ids))])
        self.client.set_payload(self.collection, payload, points=qm.FilterSelector(filter=flt), wait=True)

    def count(self, tenant: str | None = None) -> int:
        flt = None if tenant is None else qm.Filter(must=[_server_match(TENANT_FIELD, tenant)])
        return self.client.count(self.collection, count_filter=flt, exact=True).count

    def optimize(self, timeout_s: float = 600.0) -> None:
        """The server indexes in the background by itself; wait until the collection is green."""
        deadline = time.monotonic() + timeout_s
        while self.client.get_collection(self.collection).status != qm.CollectionStatus.GREEN:
            if time.monotonic() > deadline:
                raise TimeoutError(f"collection {self.collection!r} not optimised after {timeout_s} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.client.close()


def _server_match(key: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _server_filter(tenant: str, category: str | None) -> qm.Filter:
    must = [_server_match(TENANT_FIELD, tenant)]
    if category is not None:
        must.append(_server_match(CATEGORY_FIELD, category))
    return qm.Filter(must=must)


def open_index(
    backend: Literal["edge", "qdrant"],
    *,
    path: Path | None,
    url: str | None,
    api_key: str | None,
    collection: str,
    dim: int = 384,
    hnsw: HnswParams = HnswParams(),
) -> VectorIndex:
    """The backend configuration picks: ``edge`` lives under ``path / collection``, ``qdrant`` at ``url``."""
    if backend == "edge":
        if path is None:
            raise ValueError("the edge index backend needs a data path")
        return EdgeIndex(Path(path) / collection, dim=dim, hnsw=hnsw)
    if backend == "qdrant":
        if not url:
            raise ValueError("the qdrant index backend needs a URL (KDCVG_QDRANT_URL)")
        return QdrantServerIndex.from_url(url, api_key, collection, dim=dim, hnsw=hnsw)
    raise ValueError(f"unknown index backend {backend!r} (expected 'edge' or 'qdrant')")
