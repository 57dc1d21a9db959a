"""KnowledgeService.ListEntries end to end: paging, category filter, tenancy, bad input, both index backends,
the SDK's list_entries/iter_entries (and their retries) and `kdcvg kb list`."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from conftest import API_KEY, OTHER_KEY, auth
from test_knowledge_service import clip, expect_status, ingest
from typer.testing import CliRunner

from kdcvg.knowledge.base import point_key
from kdcvg.knowledge.index import point_uuid
from kdcvg.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc
from kdcvg_client import AsyncKdcvgClient, ClientConfig, InvalidArgument, KdcvgClient, RetryPolicy, Unavailable

# -- the index: scroll on both backends ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["edge", "qdrant-memory"])
def test_index_scroll_pages_by_point_id(kind, tmp_path):
    from test_index import make_points, open_backend, unit

    idx = open_backend(kind, tmp_path)
    try:
        rng = np.random.default_rng(3)
        idx.upsert(make_points(unit(rng, 25), "a") + make_points(unit(rng, 10), "b"))
        pages, offset = [], None
        while True:
            hits, offset = idx.scroll("a", limit=4, offset=offset)
            pages.append(hits)
            if offset is None:
                break
        assert [len(p) for p in pages] == [4] * 6 + [1]
        keys = [h.id for p in pages for h in p]
        assert sorted(keys) == [f"a/{i:05d}" for i in range(25)]
        assert keys == sorted(keys, key=lambda k: uuid.UUID(point_uuid("a", k)))
        n = int(keys[0][2:])
        assert pages[0][0].payload == {"tenant": "a", "category": ("food", "tech")[n % 2], "n": n}
        food, offset = idx.scroll("a", category="tech", limit=100)
        assert offset is None and len(food) == 12 and {h.payload["category"] for h in food} == {"tech"}
        assert idx.scroll("nobody", limit=10) == ([], None)
        again, _ = idx.scroll("a", limit=25)
        assert [h.id for h in again] == keys
        with pytest.raises(ValueError, match="not a point id"):
            idx.scroll("a", limit=3, offset="garbage")
        with pytest.raises(ValueError, match="limit"):
            idx.scroll("a", limit=0)
        with pytest.raises(ValueError, match="tenant"):
            idx.scroll("", limit=3)
    finally:
        idx.close()


# -- the service ------------------------------------------------------------------------------------------

# Seven entries: four food, two fashion, one tech.
CATEGORIES = ["food_beverages"] * 4 + ["fashion_luxury"] * 2 + ["electronics_mobility"]
FOOD = common_pb2.CATEGORY_FOOD_BEVERAGES


def list_request(**kwargs) -> knowledge_pb2.ListEntriesRequest:
    return knowledge_pb2.ListEntriesRequest(**kwargs)


async def add_seven(stub, key: str = API_KEY) -> list[common_pb2.Entry]:
    entries = []
    for seed, category in enumerate(CATEGORIES, 200):
        video, creative = clip(seed, categories=[category])
        entries.append((await ingest(stub, video, creative, key=key)).entry)
    return entries


async def walk(stub, key: str = API_KEY, **kwargs) -> tuple[list[common_pb2.Entry], list[int]]:
    """Every page of a listing: the entries in order and the size of each page."""
    entries, sizes, token = [], [], ""
    while True:
        page = await stub.ListEntries(list_request(page_token=token, **kwargs), metadata=auth(key))
        entries.extend(page.entries)
        sizes.append(len(page.entries))
        token = page.next_page_token
        if not token:
            return entries, sizes
        assert len(sizes) < 100, "the listing does not end"


def point_order(tenant: str, ids: list[str]) -> list[str]:
    """The order ListEntries promises: by Qdrant point id."""
    return sorted(ids, key=lambda i: point_uuid(tenant, point_key(tenant, i)))


async def test_pages_cover_every_entry_once_in_a_stable_order(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    stored = await add_seven(stub)
    by_id = {e.id: e for e in stored}

    listed, sizes = await walk(stub, page_size=3)
    assert sizes == [3, 3, 1]
    ids = [e.id for e in listed]
    assert len(set(ids)) == 7 and set(ids) == set(by_id)
    assert ids == point_order("alpha", ids)
    # The entries are the ones Get returns (has_prior included: no prior hook here, so False).
    for entry in listed:
        assert entry == (await stub.Get(knowledge_pb2.GetRequest(id=entry.id), metadata=auth())).entry
        assert entry == by_id[entry.id]
    # Stable: the same order again, whatever the page size; a page that ends exactly at the last entry has no token.
    assert [e.id for e in (await walk(stub, page_size=2))[0]] == ids
    whole = await stub.ListEntries(list_request(page_size=7), metadata=auth())
    assert [e.id for e in whole.entries] == ids and whole.next_page_token == ""
    default = await stub.ListEntries(list_request(), metadata=auth())  # page_size 0: 100
    assert [e.id for e in default.entries] == ids and default.next_page_token == ""
    largest = await stub.ListEntries(list_request(page_size=1000), metadata=auth())
    assert len(largest.entries) == 7

    # A deleted entry drops out of the listing, also when the next page was to start at it.
    first = await stub.ListEntries(list_request(page_size=3), metadata=auth())
    await stub.Delete(knowledge_pb2.DeleteRequest(id=ids[3]), metadata=auth())
    rest = await stub.ListEntries(list_request(page_size=10, page_token=first.next_page_token), metadata=auth())
    assert [e.id for e in rest.entries] == ids[4:]


async def test_category_filter_and_has_prior(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    stored = await add_seven(stub)
    food = [e.id for e in stored if e.category == FOOD]
    assert len(food) == 4

    listed, sizes = await walk(stub, page_size=3, category=FOOD)
    assert sizes == [3, 1]
    assert [e.id for e in listed] == point_order("alpha", food)
    assert all(e.category == FOOD for e in listed)
    tech, _ = await walk(stub, category=common_pb2.CATEGORY_ELECTRONICS_MOBILITY)
    assert [e.category for e in tech] == [common_pb2.CATEGORY_ELECTRONICS_MOBILITY]
    empty = await stub.ListEntries(list_request(category=common_pb2.CATEGORY_BEAUTY_HEALTH), metadata=auth())
    assert list(empty.entries) == [] and empty.next_page_token == ""

    # has_prior comes from the knowledge base's prior hook, as Get's does.
    with_prior = {food[0], stored[-1].id}
    server.kb.prior_exists = lambda tenant, entry_id: tenant == "alpha" and entry_id in with_prior
    listed, _ = await walk(stub, page_size=2)
    assert {e.id for e in listed if e.has_prior} == with_prior
    got = await stub.Get(knowledge_pb2.GetRequest(id=food[0]), metadata=auth())
    assert got.entry.has_prior


async def test_tenants_see_only_their_own_entries(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    alpha = await add_seven(stub)
    beta, _ = await walk(stub, OTHER_KEY, page_size=3)
    assert beta == []
    # The same video ingested by beta is beta's own entry; alpha's listing is unchanged.
    video, creative = clip(200, categories=[CATEGORIES[0]])
    mine = (await ingest(stub, video, creative, key=OTHER_KEY)).entry
    beta, _ = await walk(stub, OTHER_KEY)
    assert [(e.id, e.tenant) for e in beta] == [(mine.id, "beta")]
    listed, _ = await walk(stub, page_size=3)
    assert {e.id for e in listed} == {e.id for e in alpha} and {e.tenant for e in listed} == {"alpha"}
    # A token alpha was given does not open alpha's entries to beta.
    page = await stub.ListEntries(list_request(page_size=1), metadata=auth())
    rest = await stub.ListEntries(list_request(page_token=page.next_page_token), metadata=auth(OTHER_KEY))
    assert all(e.tenant == "beta" for e in rest.entries)


def forged_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"page_size": -1}, "page_size -1 is out of range 1-1000"),
        ({"page_size": 1001}, "page_size 1001 is out of range 1-1000 (0: the default, 100)"),
        ({"page_token": "garbage!"}, "page_token is not one this server issued"),
        ({"page_token": "Z2FyYmFnZQ"}, "pass the next_page_token of the previous ListEntries response unchanged"),
        ({"page_token": forged_token({"v": 1, "after": "not-a-uuid", "category": ""})}, "not one this server issued"),
        ({"page_token": forged_token({"v": 9, "after": "x", "category": ""})}, "not one this server issued"),
        ({"page_token": forged_token([1, 2])}, "not one this server issued"),
        ({"category": 42}, "unknown category 42"),
    ],
)
async def test_bad_requests_are_invalid_argument(channel, kwargs, fragment):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    await expect_status(
        stub.ListEntries(list_request(**kwargs), metadata=auth()), grpc.StatusCode.INVALID_ARGUMENT, fragment
    )


async def test_token_is_bound_to_its_category(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    for seed in (300, 301):
        video, creative = clip(seed, categories=["food_beverages"])
        await ingest(stub, video, creative)
    page = await stub.ListEntries(list_request(page_size=1, category=FOOD), metadata=auth())
    assert page.next_page_token
    details = await expect_status(
        stub.ListEntries(list_request(page_token=page.next_page_token), metadata=auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token was issued for category food_beverages",
    )
    assert "send the same category with every page" in details
    rest = await stub.ListEntries(list_request(page_token=page.next_page_token, category=FOOD), metadata=auth())
    assert len(rest.entries) == 1 and rest.entries[0].id != page.entries[0].id


async def test_api_key_is_required(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    await expect_status(stub.ListEntries(list_request()), grpc.StatusCode.UNAUTHENTICATED, "API key")
    await expect_status(
        stub.ListEntries(list_request(), metadata=auth("wrong")), grpc.StatusCode.UNAUTHENTICATED, "API key"
    )


async def test_qdrant_server_backend_lists_the_same_way(settings, encoder, atomizer):
    """The production backend (qdrant-client; its local mode stands in for a server, as in
    test_knowledge_service) behind ListEntries: same paging, filter and tenancy."""
    from qdrant_client import QdrantClient

    from kdcvg.app import start
    from kdcvg.knowledge.base import KnowledgeBase
    from kdcvg.knowledge.blobs import BlobStore
    from kdcvg.knowledge.events import EventLog
    from kdcvg.knowledge.index import QdrantServerIndex
    from kdcvg.text.batcher import MicroBatcher

    data = settings.data_dir
    kb = KnowledgeBase(
        index=QdrantServerIndex(QdrantClient(location=":memory:"), "kdcvg", dim=encoder.dim),
        blobs=BlobStore(data / "videos"),
        events=EventLog(data / "events.sqlite3"),
        encoder=encoder,
        batcher=MicroBatcher(encoder),
        atomizer=atomizer,
    )
    running = await start(settings, kb, generation=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = knowledge_pb2_grpc.KnowledgeServiceStub(ch)
            stored = await add_seven(stub)
            listed, sizes = await walk(stub, page_size=3)
            assert sizes == [3, 3, 1]
            ids = [e.id for e in listed]
            assert sorted(ids) == sorted(e.id for e in stored) and ids == point_order("alpha", ids)
            food, _ = await walk(stub, page_size=3, category=FOOD)
            assert [e.id for e in food] == point_order("alpha", [e.id for e in stored if e.category == FOOD])
            assert (await walk(stub, OTHER_KEY))[0] == []
            await expect_status(
                stub.ListEntries(list_request(page_token="garbage"), metadata=auth()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "not one this server issued",
            )
    finally:
        await running.stop(0.5)


async def test_async_sdk_iter_entries(server):
    async with AsyncKdcvgClient(f"127.0.0.1:{server.port}", api_key=API_KEY) as client:
        ids = []
        for seed, category in ((400, "food_beverages"), (401, "beauty_health"), (402, "food_beverages")):
            video, creative = clip(seed, categories=[category])
            reply = await client.ingest(
                video, category=category, caption=creative.caption, selling_points=creative.selling_points
            )
            ids.append(reply.entry.id)
        every = [e.id async for e in client.iter_entries(page_size=1)]
        assert sorted(every) == sorted(ids) and every == point_order("alpha", every)
        food = [e.id async for e in client.iter_entries("food_beverages", page_size=1)]
        assert sorted(food) == sorted([ids[0], ids[2]])
        page = await client.list_entries(2, category=FOOD)
        assert len(page.entries) == 2 and page.next_page_token == ""
        with pytest.raises(InvalidArgument, match="page_size 5000 is out of range"):
            await client.list_entries(5000)


# -- the blocking SDK and the CLI, against a server on its own thread ------------------------------------


@pytest.fixture
def threaded_server(settings, encoder, atomizer) -> Iterator:
    from kdcvg.app import build_knowledge_base
    from kdcvg.cli import background_server

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    with background_server(settings, kb, generation=False) as running:
        yield running


def test_sync_sdk_and_cli_kb_list(threaded_server):
    from kdcvg.cli import app

    target = f"127.0.0.1:{threaded_server.port}"
    with KdcvgClient(target, api_key=API_KEY) as client:
        entries = []
        for seed, category in enumerate(CATEGORIES[3:], 500):  # one food, two fashion, one tech
            video, creative = clip(seed, categories=[category], motions=["rotate"])
            entries.append(
                client.ingest(
                    video,
                    category=category,
                    caption=creative.caption,
                    selling_points=creative.selling_points,
                    motion=creative.motion,
                    product=creative.product,
                ).entry
            )
        every = list(client.iter_entries(page_size=3))
        assert sorted(e.id for e in every) == sorted(e.id for e in entries)
        assert [e.id for e in every] == point_order("alpha", [e.id for e in every])
        assert [e.id for e in client.iter_entries("fashion_luxury")] == point_order(
            "alpha", [e.id for e in entries if e.category == common_pb2.CATEGORY_FASHION_LUXURY]
        )
        first = client.list_entries(3)
        assert len(first.entries) == 3 and first.next_page_token
        assert len(client.list_entries(3, first.next_page_token).entries) == 1
        with pytest.raises(ValueError, match="unknown category"):
            client.list_entries(category="cars")
        with pytest.raises(ValueError, match="page_size"):
            client.list_entries(-1)
        threaded_server.kb.prior_exists = lambda tenant, entry_id: entry_id == entries[0].id

    runner = CliRunner()
    env = {"KDCVG_TARGET": target, "KDCVG_API_KEY": API_KEY, "COLUMNS": "200"}
    result = runner.invoke(app, ["kb", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert "4 entries" in result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in table_lines(result)}
    assert set(rows) == {e.id[:12] for e in entries}
    food = rows[entries[0].id[:12]]
    assert food[:4] == ["food_beverages", "rotate", entries[0].product, "yes"]  # the has-prior column
    assert entries[0].caption.startswith(food[4].rstrip("…"))
    assert all(rows[e.id[:12]][3] == "no" for e in entries[1:])

    result = runner.invoke(app, ["kb", "list", "--category", "fashion_luxury"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 entries" in result.output and {r[0] for r in map(cells, table_lines(result))} == {"fashion_luxury"}
    result = runner.invoke(app, ["kb", "list", "--category", "beauty_health"], env=env)
    assert result.exit_code == 0 and "no entries in category beauty_health" in result.output
    result = runner.invoke(app, ["kb", "list", "--category", "cars"], env=env)
    assert result.exit_code == 2 and "unknown category 'cars'" in result.output
    result = runner.invoke(app, ["kb", "list"], env=env | {"KDCVG_API_KEY": OTHER_KEY})
    assert result.exit_code == 0 and "no entries" in result.output
    result = runner.invoke(app, ["kb", "list"], env=env | {"KDCVG_API_KEY": "nope"})
    assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output


def table_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("│")]  # rows; the header has ┃


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")[2:-1]]


# -- retries: ListEntries is a read, retried like Get (a fake server that fails on demand) -------------


class FlakyKnowledge(knowledge_pb2_grpc.KnowledgeServiceServicer):
    """Serves two pages of ListEntries, failing each page's first `failures` attempts with UNAVAILABLE."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}

    def ListEntries(self, request, context):  # noqa: N802
        n = self.attempts[request.page_token] = self.attempts.get(request.page_token, 0) + 1
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if request.page_token == "":
            return knowledge_pb2.ListEntriesResponse(entries=[common_pb2.Entry(id="e1")], next_page_token="t2")
        return knowledge_pb2.ListEntriesResponse(entries=[common_pb2.Entry(id="e2")])


@pytest.fixture
def flaky() -> Iterator[tuple[str, FlakyKnowledge]]:
    servicer = FlakyKnowledge(failures=2)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", servicer
    grpc_server.stop(grace=None)


def test_list_entries_is_retried_like_get(flaky) -> None:
    target, servicer = flaky
    retry = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    with KdcvgClient(config=ClientConfig(target=target, api_key=API_KEY, retry=retry, timeout=5.0)) as client:
        assert [e.id for e in client.iter_entries()] == ["e1", "e2"]
    assert servicer.attempts == {"": 3, "t2": 3}
    servicer.attempts.clear()
    servicer.failures = 10
    with KdcvgClient(config=ClientConfig(target=target, api_key=API_KEY, retry=retry, timeout=5.0)) as client:
        with pytest.raises(Unavailable) as caught:
            client.list_entries()
    assert caught.value.attempts == 4 and servicer.attempts == {"": 4}
