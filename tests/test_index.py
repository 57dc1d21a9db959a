"""The vector index: one suite over both backends (EdgeIndex in a tmp dir, QdrantServerIndex on
qdrant-client's local mode), plus what only the embedded engine has: crash durability and HNSW rebuilds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from kdcvg.knowledge.index import (
    EdgeIndex,
    HnswParams,
    IndexPoint,
    QdrantServerIndex,
    open_index,
    point_uuid,
)

DIM = 384
SERVER_ROOT = Path(__file__).resolve().parents[1] / "server"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    # Clustered, like text embeddings: HNSW recall on uniform random 384-d vectors is not representative.
    centres = rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_points(vectors: np.ndarray, tenant: str, categories: tuple[str, ...] = ("food", "tech")) -> list:
    return [
        IndexPoint(f"{tenant}/{i:05d}", v, {"tenant": tenant, "category": categories[i % len(categories)], "n": i})
        for i, v in enumerate(vectors)
    ]


def open_backend(kind: str, where: Path):
    if kind == "edge":
        return EdgeIndex(where / "edge", hnsw=HnswParams(m=8, ef_construct=32, ef=64))
    if kind == "qdrant-memory":
        return QdrantServerIndex(QdrantClient(location=":memory:"), "kb")
    if kind == "qdrant-path":
        return QdrantServerIndex(QdrantClient(path=str(where / "qdrant")), "kb")
    raise AssertionError(kind)


@pytest.fixture(params=["edge", "qdrant-memory"])
def index(request, tmp_path):
    idx = open_backend(request.param, tmp_path)
    yield idx
    idx.close()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_upsert_search_retrieve_delete_count(index, rng):
    pts = make_points(unit(rng, 40), "acme")
    index.upsert(pts)
    assert index.count() == 40 and index.count("acme") == 40

    hits = index.search(pts[3].vector, tenant="acme", category=None, limit=5)
    assert hits[0].id == "acme/00003" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == {"tenant": "acme", "category": "tech", "n": 3}
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    got = index.retrieve(["acme/00007", "acme/missing", "acme/00001"], tenant="acme")
    assert [h.id for h in got] == ["acme/00007", "acme/00001"]
    assert got[0].payload["n"] == 7

    index.delete(["acme/00007", "acme/00008"], tenant="acme")
    assert index.count("acme") == 38
    assert index.retrieve(["acme/00007"], tenant="acme") == []
    assert all(h.id != "acme/00007" for h in index.search(pts[7].vector, tenant="acme", category=None, limit=40))
    index.optimize()  # nothing to index at this size; must be harmless
    assert index.count("acme") == 38


def test_tenants_never_see_each_other(index, rng):
    a = make_points(unit(rng, 30), "a")
    b = make_points(unit(rng, 30), "b")
    index.upsert(a + b)

    for p in a[:5]:
        hits = index.search(p.vector, tenant="b", category=None, limit=50)
        assert hits and all(h.payload["tenant"] == "b" and h.id.startswith("b/") for h in hits)
        assert all(h.payload["tenant"] == "b" for h in index.search(p.vector, tenant="b", category="food", limit=50))
    assert index.retrieve([p.id for p in a], tenant="b") == []
    assert index.search(a[0].vector, tenant="nobody", category=None, limit=10) == []

    index.delete([p.id for p in a], tenant="b")
    assert index.count("a") == 30 and index.count("b") == 30

    # The same key written by another tenant is another point: it cannot overwrite a's.
    index.upsert([IndexPoint(a[0].id, b[0].vector, {"tenant": "b", "category": "food", "n": -1})])
    assert index.retrieve([a[0].id], tenant="a")[0].payload["n"] == 0
    assert index.count("a") == 30 and index.count("b") == 31


def test_category_filter(index, rng):
    pts = make_points(unit(rng, 60), "t", categories=("food", "tech", "beauty"))
    index.upsert(pts)
    hits = index.search(pts[0].vector, tenant="t", category="tech", limit=100)
    assert len(hits) == 20 and {h.payload["category"] for h in hits} == {"tech"}
    assert index.search(pts[0].vector, tenant="t", category="cars", limit=10) == []
    assert len(index.search(pts[0].vector, tenant="t", category=None, limit=100)) == 60


def test_upsert_is_idempotent_by_id(index, rng):
    v = unit(rng, 2)
    index.upsert([IndexPoint("t/x", v[0], {"tenant": "t", "category": "c", "rev": 1})])
    index.upsert([IndexPoint("t/x", v[0], {"tenant": "t", "category": "c", "rev": 1})])
    index.upsert([IndexPoint("t/x", v[1], {"tenant": "t", "category": "c", "rev": 2})])
    assert index.count() == 1
    assert index.retrieve(["t/x"], tenant="t")[0].payload["rev"] == 2
    assert index.search(v[1], tenant="t", category=None, limit=3)[0].score == pytest.approx(1.0, abs=1e-5)


def test_rejects_bad_points(index, rng):
    v = unit(rng, 1)[0]
    with pytest.raises(ValueError):
        index.upsert([IndexPoint("x", v, {"category": "c"})])  # no tenant
    with pytest.raises(ValueError):
        index.upsert([IndexPoint("x", v[:10], {"tenant": "t", "category": "c"})])
    with pytest.raises(ValueError):
        index.search(v, tenant="", category=None, limit=3)
    assert index.count() == 0


def test_search_equals_bruteforce_cosine(index, rng):
    x = unit(rng, 2000)
    tenants = np.where(np.arange(2000) % 3 == 0, "a", "b")
    pts = [
        IndexPoint(f"{t}/{i}", v, {"tenant": str(t), "category": ("x", "y")[i % 2]})
        for i, (v, t) in enumerate(zip(x, tenants, strict=True))
    ]
    for s in range(0, len(pts), 500):
        index.upsert(pts[s : s + 500])
    queries = unit(rng, 10)
    for exact in (False, True):
        for q in queries:
            for category in (None, "y"):
                mask = tenants == "b"
                if category:
                    mask &= np.arange(2000) % 2 == 1
                scores = x[mask] @ q
                order = np.argsort(-scores)[:10]
                want = [f"b/{i}" for i in np.flatnonzero(mask)[order]]
                hits = index.search(q, tenant="b", category=category, limit=10, exact=exact)
                assert [h.id for h in hits] == want
                np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)


def test_nearest_payloads_and_scan_work_by_point_id(index, rng):
    """The payload-free path of Search: ids and scores from nearest(), fields by id, every point by scan."""
    a, b = make_points(unit(rng, 30), "a"), make_points(unit(rng, 20), "b")
    index.upsert(a + b)
    want = index.search(a[4].vector, tenant="a", category="food", limit=8)
    near = index.nearest(a[4].vector, tenant="a", category="food", limit=8)
    assert [point_uuid("a", h.id) for h in want] == [pid for pid, _ in near]
    np.testing.assert_allclose([h.score for h in want], [score for _, score in near], atol=1e-6)
    assert index.nearest(a[4].vector, tenant="nobody", category=None, limit=5) == []

    ids = [pid for pid, _ in near[:3]] + [point_uuid("a", "a/missing")]
    got = index.payloads(ids, ["_key", "n"])
    assert set(got) == set(ids[:3])  # a missing point is simply absent
    assert {got[i]["_key"] for i in ids[:3]} == {h.id for h in want[:3]}
    assert all(set(v) == {"_key", "n"} for v in got.values())  # only the fields asked for

    pages = list(index.scan(["_key"], batch=16))
    assert len(pages) >= 4 and all(len(page) <= 16 for page in pages)
    seen = {pid: payload["_key"] for page in pages for pid, payload in page}
    assert seen == {point_uuid(p.payload["tenant"], p.id): p.id for p in a + b}


@pytest.mark.parametrize("kind", ["edge", "qdrant-path"])
def test_reopen_keeps_data(kind, tmp_path, rng):
    pts = make_points(unit(rng, 50), "t")
    idx = open_backend(kind, tmp_path)
    idx.upsert(pts)
    idx.delete(["t/00000"], tenant="t")
    idx.close()
    idx = open_backend(kind, tmp_path)
    try:
        assert idx.count("t") == 49
        assert idx.search(pts[9].vector, tenant="t", category=None, limit=1)[0].id == "t/00009"
    finally:
        idx.close()


def test_open_index_picks_backend(tmp_path):
    idx = open_index("edge", path=tmp_path, url=None, api_key=None, collection="kb", hnsw=HnswParams())
    assert isinstance(idx, EdgeIndex) and idx.path == tmp_path / "kb"
    idx.close()
    idx = open_index("qdrant", path=None, url=":memory:", api_key=None, collection="kb", hnsw=HnswParams())
    assert isinstance(idx, QdrantServerIndex)
    idx.close()
    with pytest.raises(ValueError):
        open_index("qdrant", path=tmp_path, url=None, api_key=None, collection="kb", hnsw=HnswParams())
    with pytest.raises(ValueError):
        open_index("faiss", path=tmp_path, url=None, api_key=None, collection="kb")  # type: ignore[arg-type]


class RemoteLookingClient:
    """qdrant-client's local mode dressed as a server client: records the calls only a server gets."""

    def __init__(self):
        self._real = QdrantClient(location=":memory:")
        self._client = object()  # not QdrantLocal
        self.calls = []

    def create_collection(self, name, **kwargs):
        self.calls.append(("create_collection", kwargs))
        return self._real.create_collection(name, **kwargs)

    def create_payload_index(self, collection, field_name, field_schema, wait=True):
        self.calls.append((field_name, field_schema))

    def query_points(self, *args, search_params=None, **kwargs):
        self.calls.append(("search_params", search_params))
        return self._real.query_points(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_server_index_creates_payload_indexes_and_sends_ef(rng):
    client = RemoteLookingClient()
    idx = QdrantServerIndex(client, "kb", hnsw=HnswParams(m=12, ef_construct=90, ef=77))
    schemas = dict(client.calls)
    assert schemas["tenant"].is_tenant is True and schemas["tenant"].type == "keyword"
    assert schemas["category"] == "keyword"
    created = schemas["create_collection"]
    assert (created["vectors_config"].size, created["vectors_config"].distance) == (DIM, "Cosine")
    assert (created["hnsw_config"].m, created["hnsw_config"].ef_construct) == (12, 90)

    idx.upsert(make_points(unit(rng, 5), "t"))
    idx.search(unit(rng, 1)[0], tenant="t", category=None, limit=3, exact=True)
    params = client.calls[-1][1]
    assert (params.hnsw_ef, params.exact) == (77, True)
    idx.close()


def test_edge_is_single_process(tmp_path):
    idx = EdgeIndex(tmp_path / "kb")
    try:
        with pytest.raises(RuntimeError, match="another process"):
            EdgeIndex(tmp_path / "kb")
    finally:
        idx.close()


# --- embedded engine only ---------------------------------------------------------------------------------

KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from kdcvg.knowledge.index import EdgeIndex, HnswParams, IndexPoint

    during_rebuild = sys.argv[2] == "during-rebuild"
    # In rebuild mode the first batches cross the threshold and start a background rebuild.
    idx = EdgeIndex(Path(sys.argv[1]), hnsw=HnswParams(ef_construct=200, indexing_threshold=1000))
    rng = np.random.default_rng(0)

    def write(batch):
        x = rng.standard_normal((100, 384)).astype(np.float32)
        idx.upsert([IndexPoint(f"t/{batch}-{i}", v, {"tenant": "t", "category": "c"}) for i, v in enumerate(x)])

    for batch in range(20 if during_rebuild else 5):
        write(batch)
    if during_rebuild:
        deadline = time.monotonic() + 30
        while idx._child is None and time.monotonic() < deadline:  # wait for the optimiser process
            time.sleep(0.001)
        assert idx._child is not None
        write("late")  # lands in the old shard and in the journal for the new one
    idx.delete(["t/0-0"], tenant="t")
    print("acked", flush=True)
    time.sleep(60)
    """
)


def processes_mentioning(path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(path).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize("mode", ["plain", "during-rebuild"])
def test_edge_acked_writes_survive_kill_9(tmp_path, mode):
    """Once upsert/delete return, the data survives SIGKILL, also while a background rebuild is running."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SERVER_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(tmp_path / "kb"), mode],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "acked"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The optimiser child, if one was running, dies with its parent (PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 10
    while processes_mentioning(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(tmp_path)
    idx = EdgeIndex(tmp_path / "kb", auto_optimize=False)
    try:
        last = "t/late-99" if mode == "during-rebuild" else "t/4-99"
        assert idx.count("t") == (2099 if mode == "during-rebuild" else 499)
        assert [h.id for h in idx.retrieve(["t/0-0", "t/0-1", last], tenant="t")] == ["t/0-1", last]
        assert sorted(p.name for p in (tmp_path / "kb").iterdir() if p.name.startswith("shard-")) == [
            (tmp_path / "kb" / "CURRENT").read_text().strip()
        ]
    finally:
        idx.close()


def test_edge_hnsw_rebuild_keeps_serving_and_writes(tmp_path, rng):
    """optimize() builds HNSW out of process: searches keep answering and writes made meanwhile survive."""
    hnsw = HnswParams(m=8, ef_construct=32, ef=128, full_scan_threshold_kb=50, indexing_threshold=300)
    idx = EdgeIndex(tmp_path / "kb", hnsw=hnsw, auto_optimize=False)
    x = unit(rng, 1500)
    pts = make_points(x, "t")
    idx.upsert(pts[:1200])
    assert idx.unindexed() == 1200

    done = threading.Event()
    worst = 0.0

    def optimise():
        idx.optimize()
        done.set()

    t = threading.Thread(target=optimise)
    t.start()
    n = 1200
    while not done.is_set():
        t0 = time.perf_counter()
        assert idx.search(x[n % 1200], tenant="t", category=None, limit=1)[0].id == f"t/{n % 1200:05d}"
        worst = max(worst, time.perf_counter() - t0)
        if n < 1500:
            idx.upsert([pts[n]])
            n += 1
        time.sleep(0.005)
    t.join()
    idx.upsert(pts[n:])
    assert worst < 1.0, f"a search waited {worst:.2f} s during optimisation"
    assert n > 1200, "no write went through during optimisation"
    assert idx.count("t") == 1500
    assert idx.unindexed() <= 300  # the first 1200 are in an HNSW graph now

    queries = unit(rng, 20)
    recall = []
    for q in queries:
        want = {f"t/{i:05d}" for i in np.argsort(-(x @ q))[:10]}
        assert {h.id for h in idx.search(q, tenant="t", category=None, limit=10, exact=True)} == want
        recall.append(len(want & {h.id for h in idx.search(q, tenant="t", category=None, limit=10)}) / 10)
    assert np.mean(recall) >= 0.9
    idx.close()

    idx = EdgeIndex(tmp_path / "kb", hnsw=hnsw, auto_optimize=False)
    try:
        assert idx.count("t") == 1500 and idx.unindexed() < 1500
        assert len(list((tmp_path / "kb").glob("shard-*"))) == 1
    finally:
        idx.close()


def test_edge_auto_optimize_in_background(tmp_path, rng):
    hnsw = HnswParams(m=8, ef_construct=32, indexing_threshold=300)
    idx = EdgeIndex(tmp_path / "kb", hnsw=hnsw)
    try:
        idx.upsert(make_points(unit(rng, 400), "t"))
        deadline = time.monotonic() + 30
        while idx.unindexed() >= 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert idx.unindexed() < 300 and idx.count("t") == 400
    finally:
        idx.close()


def test_set_payload_changes_only_the_named_fields(index, rng):
    """What the knowledge base's re-atomizing writes with: fields by point id, the rest untouched, a point
    deleted meanwhile no error."""
    points = make_points(unit(rng, 6), "a")
    index.upsert(points)
    ids = [point_uuid("a", p.id) for p in points[:2]]
    index.set_payload([*ids, point_uuid("a", "a/missing")], {"units": [["slide left", "", "", True]], "v": 2})
    got = index.payloads([point_uuid("a", p.id) for p in points[:3]], ["units", "v", "n", "category"])
    for i, p in enumerate(points[:2]):
        want = {"units": [["slide left", "", "", True]], "v": 2, "n": i, "category": p.payload["category"]}
        assert got[ids[i]] == want
    assert "units" not in got[point_uuid("a", points[2].id)]
    assert index.count("a") == 6
    index.set_payload([], {"v": 3})  # nothing to do
