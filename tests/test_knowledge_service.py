"""KnowledgeService over real gRPC: happy paths, bad inputs, tenancy, cancellation, nothing half-written."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import API_KEY, OTHER_KEY, auth
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kdcvg.data.creatives import make_creative
from kdcvg.media.video import encode_mp4
from kdcvg.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc

CHUNK = 1024


def clip(seed: int, **kw) -> tuple[bytes, object]:
    creative = make_creative(seed, **kw)
    return encode_mp4(creative.frames, fps=creative.spec.fps), creative


def ingest_messages(video: bytes, creative, *, total: bool = True, **overrides):
    meta = knowledge_pb2.IngestMetadata(
        category=common_pb2.Category.Value("CATEGORY_" + creative.category.upper()),
        caption=creative.caption,
        selling_points=creative.selling_points,
        motion=creative.motion,
        product=creative.product,
        total_bytes=len(video) if total else 0,
    )
    for key, value in overrides.items():
        if isinstance(value, list):
            del getattr(meta, key)[:]
            getattr(meta, key).extend(value)
        else:
            setattr(meta, key, value)
    yield knowledge_pb2.IngestRequest(metadata=meta)
    for i in range(0, len(video), CHUNK):
        yield knowledge_pb2.IngestRequest(chunk=video[i : i + CHUNK])


async def ingest(stub, video, creative, key=API_KEY, **overrides) -> knowledge_pb2.IngestResponse:
    return await stub.Ingest(ingest_messages(video, creative, **overrides), metadata=auth(key))


async def expect_status(coro, code: grpc.StatusCode, fragment: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, info.value.details()
    assert fragment.lower() in (info.value.details() or "").lower()
    return info.value.details()


def nothing_written(server) -> bool:
    blobs = [p for p in server.kb.blobs.root.rglob("*") if p.is_file()]
    return server.kb.count() == 0 and blobs == []


async def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kdcvg.v1.KnowledgeService", "kdcvg.v1.GenerationService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"kdcvg.v1.KnowledgeService", "kdcvg.v1.ScoringService", "kdcvg.v1.PriorService"} <= names


async def test_ingest_get_search_delete(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(1, motions=["rotate"])
    reply = await ingest(stub, video, creative)
    entry = reply.entry
    assert not reply.already_existed
    assert entry.id == hashlib.sha256(video).hexdigest()
    assert entry.tenant == "alpha"
    assert entry.frame_count == creative.frames.shape[0]
    assert (entry.width, entry.height) == (creative.frames.shape[2], creative.frames.shape[1])
    assert entry.keyframe_indices and list(entry.keyframe_indices) == sorted(entry.keyframe_indices)
    assert sum(u.core for u in entry.units) == 1
    got = await stub.Get(knowledge_pb2.GetRequest(id=entry.id), metadata=auth())
    assert got.entry == entry
    found = await stub.Search(knowledge_pb2.SearchRequest(selling_points=creative.selling_points), metadata=auth())
    assert found.references[0].entry.id == entry.id
    assert found.retrieval_id
    await stub.Delete(knowledge_pb2.DeleteRequest(id=entry.id), metadata=auth())
    await expect_status(stub.Get(knowledge_pb2.GetRequest(id=entry.id), metadata=auth()), grpc.StatusCode.NOT_FOUND)
    assert nothing_written(server)


async def test_ingest_is_idempotent(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(2)
    first = await ingest(stub, video, creative)
    replies = await asyncio.gather(*(ingest(stub, video, creative) for _ in range(3)))
    assert all(r.already_existed and r.entry.id == first.entry.id for r in replies)
    assert server.kb.count() == 1
    # The same clip for another tenant is that tenant's own entry.
    other = await ingest(stub, video, creative, key=OTHER_KEY)
    assert not other.already_existed and other.entry.tenant == "beta"
    assert server.kb.count("alpha") == 1 and server.kb.count("beta") == 1


async def test_search_ranks_by_motion_and_explains(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    motions = ["rotate", "slide_left", "bounce", "zoom_in", "shake", "float"]
    for seed, motion in enumerate(motions * 2, 10):
        video, creative = clip(seed, motions=[motion])
        await ingest(stub, video, creative)
    reply = await stub.Search(
        knowledge_pb2.SearchRequest(selling_points=["bottle spins to show every angle"], limit=3),
        metadata=auth(),
    )
    assert len(reply.references) == 3
    assert reply.references[0].entry.motion == "rotate"
    assert any(u.core and u.motion for u in reply.query_units)
    for ref in reply.references:
        s = ref.score
        assert s.score == pytest.approx(s.total_similarity + s.unit_score, abs=1e-4)
        assert s.unit_score == pytest.approx(
            s.motion_similarity + s.actor_similarity + 0.5 * s.unit_similarity, abs=1e-4
        )
    assert [r.rank for r in reply.references] == [1, 2, 3]
    # A motion named by a noun shows as such, and the motion verb beside it is the query's core.
    reply = await stub.Search(
        knowledge_pb2.SearchRequest(selling_points=["a smooth side reveal", "slides left into view"], limit=1),
        metadata=auth(),
    )
    units = {u.motion: u for u in reply.query_units}
    assert units["reveal"].nominal and not units["reveal"].core
    assert units["slide left"].core and not units["slide left"].nominal
    assert {"encode", "parse", "index", "rank"} <= set(reply.stage_micros)
    cosine = await stub.Search(
        knowledge_pb2.SearchRequest(
            selling_points=["bottle spins to show every angle"], limit=3, ranking=knowledge_pb2.RANKING_COSINE
        ),
        metadata=auth(),
    )
    assert all(r.score.score == pytest.approx(r.score.total_similarity) for r in cosine.references)


async def test_search_ranks_from_the_unit_table_or_the_index(channel, server):
    """Candidates' units come from memory; a point the table lacks (another replica ingested it) is read
    from the index with the same result, and a table loaded from the index equals the one filled by ingest."""
    from kdcvg.knowledge.index import KEY_FIELD, point_uuid
    from kdcvg.retrieval.unit_table import UnitTable

    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    kb = server.kb
    entries = []
    for seed, motion in enumerate(["rotate", "bounce", "zoom_in", "float"], 60):
        video, creative = clip(seed, motions=[motion])
        entries.append((await ingest(stub, video, creative)).entry)
    points = [point_uuid("alpha", f"alpha/{e.id}") for e in entries]
    assert all(p in kb.units for p in points)

    request = knowledge_pb2.SearchRequest(selling_points=["a bottle that bounces on the table"], limit=4)
    first = await stub.Search(request, metadata=auth())
    kb.units.discard(points)
    again = await stub.Search(request, metadata=auth())
    assert [(r.entry, r.score) for r in again.references] == [(r.entry, r.score) for r in first.references]
    assert all(p in kb.units for p in points)  # filled on the miss

    loaded = UnitTable(kb.encoder.encode, kb.encoder.dim)
    assert loaded.load(kb.index.scan([KEY_FIELD, "units"]), KEY_FIELD) == len(points)
    mine, ids = kb.units.pack(points)
    theirs, ids2 = loaded.pack(points)
    assert ids == ids2 == [e.id for e in entries]
    # The int8 encoder quantises each batch as a whole, so a string embedded in another batch differs a little.
    assert np.all(np.einsum("nd,nd->n", mine.mot, theirs.mot)[np.linalg.norm(mine.mot, axis=1) > 0] > 0.99)
    np.testing.assert_array_equal(mine.core, theirs.core)

    await stub.Delete(knowledge_pb2.DeleteRequest(id=entries[0].id), metadata=auth())
    assert points[0] not in kb.units


async def test_a_search_alone_encodes_on_the_solo_session(channel, server):
    """A new phrase's search encodes on the one-thread session, beside its parse. Once its phrases' vectors
    are kept, the same search runs no encoder at all. With the phrases parsed but their vectors not kept
    (evicted, or met at ingest), a search alone encodes on the session with more threads. Same answer."""
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    kb = server.kb
    for seed, motion in enumerate(["rotate", "bounce", "zoom_in"], 70):
        video, creative = clip(seed, motions=[motion])
        await ingest(stub, video, creative)
    request = knowledge_pb2.SearchRequest(selling_points=["watch it spin round", "never seen before"], limit=3)
    runs, items = kb.batcher.solo_runs, kb.batcher.items
    first = await stub.Search(request, metadata=auth())
    assert first.stage_micros["parse"] > 500 and kb.batcher.solo_runs == runs  # parsed beside the encoding
    assert kb.batcher.items == items + 2  # the two phrases, one vector each
    kept = await stub.Search(request, metadata=auth())
    assert kept.stage_micros["parse"] < 500 and kb.batcher.items == items + 2  # nothing encoded
    kb.phrase_vectors.clear()
    again = await stub.Search(request, metadata=auth())
    assert again.stage_micros["parse"] < 500 and kb.batcher.solo_runs == runs + 1
    for reply in (kept, again):
        assert [r.entry.id for r in reply.references] == [r.entry.id for r in first.references]
        np.testing.assert_allclose(
            [r.score.score for r in reply.references], [r.score.score for r in first.references], atol=2e-3
        )


async def test_the_query_vector_is_the_mean_of_its_phrases(channel, server):
    """The sentence vector of a query is the unit vector along the mean of its phrases' vectors (the product
    first, when given); a phrase is encoded once and kept."""
    from kdcvg.knowledge.base import entry_text, mean_direction

    kb = server.kb
    for seed, motion in enumerate(["rotate", "float"], 80):
        video, creative = clip(seed, motions=[motion])
        await ingest(knowledge_pb2_grpc.KnowledgeServiceStub(channel), video, creative)
    phrases = ["sparkling water", "spins to show every angle", "ice-cold refreshment"]
    result = await kb.search("alpha", phrases[1:], product=phrases[0], limit=2, ranking="cosine")
    want = mean_direction(kb.encoder.encode(phrases))
    top = result.references[0]
    got = float(np.dot(want, kb.encoder.encode([entry_text(top.entry.caption, top.entry.selling_points)])[0]))
    assert top.parts.total_similarity == pytest.approx(got, abs=2e-3)
    assert set(kb.phrase_vectors.lookup(phrases)) == set(phrases)
    np.testing.assert_allclose(np.linalg.norm(want), 1.0, atol=1e-6)


async def test_ingest_parses_on_the_parser_thread(channel, server, monkeypatch):
    import threading

    kb = server.kb
    threads: list[str] = []
    atomize_many = kb.atomizer.atomize_many

    def spy(texts):
        threads.append(threading.current_thread().name)
        return atomize_many(texts)

    monkeypatch.setattr(kb.atomizer, "atomize_many", spy)
    video, creative = clip(80, motions=["pulse"])
    entry = (await ingest(knowledge_pb2_grpc.KnowledgeServiceStub(channel), video, creative)).entry
    assert threads and all(name.startswith("kdcvg-parse") for name in threads)
    assert list(entry.units)


def test_parser_thread_runs_torch_on_one_thread(server):
    """The parser's thread runs PyTorch single-threaded (its OpenMP team waited for a core beside the
    encoder); the thread that set it up and threads started later keep the process default."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from kdcvg.knowledge.base import _one_torch_thread

    assert server.kb._parser.submit(torch.get_num_threads).result() == 1
    before = torch.get_num_threads()
    with ThreadPoolExecutor(1) as pool:
        _one_torch_thread(pool)
        assert pool.submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == before
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [before]


def test_parse_job_runs_once_and_never_after_cancel():
    """A search's parse starts when its encoding does, at most once; a search cancelled before that never
    parses, and asking for its units then raises CancelledError rather than hanging."""
    from concurrent.futures import CancelledError, ThreadPoolExecutor

    from kdcvg.knowledge.base import _ParseJob

    calls: list[str] = []

    def parse(text: str) -> list[list[str]]:
        calls.append(text)
        return [[text]]

    with ThreadPoolExecutor(1) as pool:
        job = _ParseJob(pool, parse, "spins left")
        assert calls == []  # nothing runs until started
        job.start()
        job.start()
        assert job.result() == [["spins left"]] and calls == ["spins left"]
        job.cancel()  # after it ran: a no-op
        assert job.result() == [["spins left"]]

        cancelled = _ParseJob(pool, parse, "zooms in")
        cancelled.cancel()
        cancelled.start()
        with pytest.raises(CancelledError):
            cancelled.result()
        assert calls == ["spins left"]


async def test_search_category_filter_and_tenancy(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    food, c_food = clip(30, categories=["food_beverages"])
    tech, c_tech = clip(31, categories=["electronics_mobility"])
    await ingest(stub, food, c_food)
    await ingest(stub, tech, c_tech)
    reply = await stub.Search(
        knowledge_pb2.SearchRequest(
            selling_points=c_food.selling_points, category=common_pb2.CATEGORY_ELECTRONICS_MOBILITY
        ),
        metadata=auth(),
    )
    assert [r.entry.category for r in reply.references] == [common_pb2.CATEGORY_ELECTRONICS_MOBILITY]
    # Tenant beta sees nothing of alpha's: not by search, get, delete or feedback.
    other = await stub.Search(knowledge_pb2.SearchRequest(selling_points=["anything"]), metadata=auth(OTHER_KEY))
    assert list(other.references) == []
    food_id = hashlib.sha256(food).hexdigest()
    await expect_status(
        stub.Get(knowledge_pb2.GetRequest(id=food_id), metadata=auth(OTHER_KEY)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        stub.Delete(knowledge_pb2.DeleteRequest(id=food_id), metadata=auth(OTHER_KEY)),
        grpc.StatusCode.NOT_FOUND,
    )
    mine = await stub.Search(knowledge_pb2.SearchRequest(selling_points=c_food.selling_points), metadata=auth())
    await expect_status(
        stub.Feedback(
            knowledge_pb2.FeedbackRequest(retrieval_id=mine.retrieval_id, entry_id=food_id, reward=1),
            metadata=auth(OTHER_KEY),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await stub.Get(knowledge_pb2.GetRequest(id=food_id), metadata=auth())).entry.id == food_id


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"caption": ""}, "caption is empty"),
        ({"caption": "x" * 1001}, "caption has 1001"),
        ({"selling_points": []}, "selling_points is empty"),
        ({"selling_points": ["ok", "  "]}, "selling_points[1] is empty"),
        ({"selling_points": ["y" * 201]}, "at most 200"),
        ({"selling_points": [f"p{i}" for i in range(9)]}, "at most 8"),
        ({"category": 0}, "category is required"),
        ({"category": 99}, "unknown category"),
        ({"sha256": "0" * 64}, "sha256 mismatch"),
    ],
)
async def test_ingest_rejects_bad_metadata(channel, server, overrides, fragment):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(3)
    await expect_status(ingest(stub, video, creative, **overrides), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    assert nothing_written(server)


async def test_ingest_rejects_bad_streams(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(4)
    messages = list(ingest_messages(video, creative))
    # Chunks before metadata.
    await expect_status(
        stub.Ingest(iter(messages[1:]), metadata=auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "first Ingest message",
    )
    # Metadata twice.
    await expect_status(
        stub.Ingest(iter([messages[0], messages[0], *messages[1:]]), metadata=auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "only be sent once",
    )
    # Truncated: fewer bytes than announced.
    await expect_status(
        stub.Ingest(iter(messages[:-1]), metadata=auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "stream ended after",
    )
    # Truncated with no announced size: the video itself does not decode.
    half = video[: len(video) // 2]
    await expect_status(
        ingest(stub, half, creative, total=False), grpc.StatusCode.INVALID_ARGUMENT, "not a usable video"
    )
    # Not a video at all.
    text = b"this is a text file, not a video\n" * 50
    await expect_status(ingest(stub, text, creative), grpc.StatusCode.INVALID_ARGUMENT, "not a usable video")
    # No bytes.
    await expect_status(
        stub.Ingest(iter(messages[:1]), metadata=auth()), grpc.StatusCode.INVALID_ARGUMENT, "no video bytes"
    )
    # Oversized (the test server allows 2 MiB).
    big = b"\0" * (2 * 1024 * 1024 + 1)
    await expect_status(ingest(stub, big, creative, total=False), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit")
    await expect_status(ingest(stub, big, creative), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit")
    assert nothing_written(server)
    assert list(server.kb.blobs.spool.iterdir()) == []


async def test_ingest_cancelled_midway_leaves_nothing(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(5)
    sent = asyncio.Event()

    async def slow_stream():
        messages = list(ingest_messages(video, creative))
        yield messages[0]
        yield messages[1]
        sent.set()
        await asyncio.sleep(30)
        for m in messages[2:]:
            yield m

    call = stub.Ingest(slow_stream(), metadata=auth())
    await sent.wait()
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):
        if not list(server.kb.blobs.spool.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert nothing_written(server)
    assert list(server.kb.blobs.spool.iterdir()) == []


@pytest.mark.parametrize(
    ("request_kwargs", "code", "fragment"),
    [
        ({"selling_points": []}, grpc.StatusCode.INVALID_ARGUMENT, "selling_points is empty"),
        ({"selling_points": [" "]}, grpc.StatusCode.INVALID_ARGUMENT, "empty or whitespace"),
        ({"selling_points": ["z" * 201]}, grpc.StatusCode.INVALID_ARGUMENT, "at most 200"),
        ({"selling_points": ["ok"], "limit": 101}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ({"selling_points": ["ok"], "limit": -1}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ({"selling_points": ["ok"], "category": 42}, grpc.StatusCode.INVALID_ARGUMENT, "unknown category"),
        ({"selling_points": ["ok"], "product": "p" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "product"),
    ],
)
async def test_search_rejects_bad_input(channel, request_kwargs, code, fragment):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    await expect_status(stub.Search(knowledge_pb2.SearchRequest(**request_kwargs), metadata=auth()), code, fragment)


async def test_search_deadline_and_cancellation(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    await expect_status(
        stub.Search(knowledge_pb2.SearchRequest(selling_points=["spins"]), metadata=auth(), timeout=0.0001),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    call = stub.Search(knowledge_pb2.SearchRequest(selling_points=["spins around"]), metadata=auth())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The server is fine afterwards.
    reply = await stub.Search(knowledge_pb2.SearchRequest(selling_points=["spins"]), metadata=auth())
    assert reply.retrieval_id


async def test_get_delete_bad_ids(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    for rpc in (stub.Get, stub.Delete):
        request = knowledge_pb2.GetRequest(id="nope") if rpc is stub.Get else knowledge_pb2.DeleteRequest(id="nope")
        await expect_status(rpc(request, metadata=auth()), grpc.StatusCode.INVALID_ARGUMENT, "not an entry id")
    await expect_status(
        stub.Delete(knowledge_pb2.DeleteRequest(id="a" * 64), metadata=auth()), grpc.StatusCode.NOT_FOUND
    )


async def test_feedback_is_validated_and_durable(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    video, creative = clip(6)
    entry = (await ingest(stub, video, creative)).entry
    found = await stub.Search(knowledge_pb2.SearchRequest(selling_points=creative.selling_points), metadata=auth())
    reply = await stub.Feedback(
        knowledge_pb2.FeedbackRequest(retrieval_id=found.retrieval_id, entry_id=entry.id, reward=0.75, note="ctr up"),
        metadata=auth(),
    )
    assert reply.event_id
    bad = [
        (
            {"retrieval_id": "", "entry_id": entry.id, "reward": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "retrieval_id",
        ),
        (
            {"retrieval_id": "missing", "entry_id": entry.id, "reward": 1},
            grpc.StatusCode.NOT_FOUND,
            "no retrieval",
        ),
        (
            {"retrieval_id": found.retrieval_id, "entry_id": entry.id, "reward": 2},
            grpc.StatusCode.INVALID_ARGUMENT,
            "range",
        ),
        (
            {"retrieval_id": found.retrieval_id, "entry_id": "b" * 64, "reward": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "not among",
        ),
    ]
    for kwargs, code, fragment in bad:
        await expect_status(stub.Feedback(knowledge_pb2.FeedbackRequest(**kwargs), metadata=auth()), code, fragment)
    from kdcvg.knowledge.events import EventLog

    reopened = EventLog(server.kb.events.path)
    events = reopened.feedback("alpha")
    reopened.close()
    assert [(e.entry_id, e.reward, e.note) for e in events] == [(entry.id, 0.75, "ctr up")]


async def test_auth_is_required_everywhere(channel):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    request = knowledge_pb2.SearchRequest(selling_points=["spins"])
    await expect_status(stub.Search(request), grpc.StatusCode.UNAUTHENTICATED, "API key")
    await expect_status(stub.Search(request, metadata=auth("wrong")), grpc.StatusCode.UNAUTHENTICATED, "API key")
    await expect_status(
        stub.Search(request, metadata=(("authorization", "Basic abc"),)), grpc.StatusCode.UNAUTHENTICATED
    )
    # x-api-key works as well as the Bearer form.
    reply = await stub.Search(request, metadata=(("x-api-key", API_KEY),))
    assert reply.retrieval_id

    # Nothing is sent on the stream: the server refuses it on its metadata alone (a message written while
    # that refusal is in flight can fail on the client, which grpc reports as INTERNAL).
    async def silent():
        await asyncio.Event().wait()
        yield knowledge_pb2.IngestRequest()

    await expect_status(stub.Ingest(silent()), grpc.StatusCode.UNAUTHENTICATED)


async def test_metrics_endpoint_counts_rpcs(channel, server):
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    await stub.Search(knowledge_pb2.SearchRequest(selling_points=["spins"]), metadata=auth())
    await expect_status(stub.Search(knowledge_pb2.SearchRequest()), grpc.StatusCode.UNAUTHENTICATED)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    )
    assert 'kdcvg_grpc_requests_total{code="OK",method="KnowledgeService/Search"} 1.0' in body
    assert 'kdcvg_grpc_requests_total{code="UNAUTHENTICATED",method="KnowledgeService/Search"} 1.0' in body
    assert "kdcvg_grpc_latency_seconds_bucket" in body
    assert 'kdcvg_stage_latency_seconds_count{stage="encode"} 1.0' in body
    assert "kdcvg_encoder_batches 1.0" in body


async def test_graceful_shutdown_drains_in_flight(settings, encoder, atomizer):
    from kdcvg.app import build_knowledge_base, start

    running = await start(
        settings, build_knowledge_base(settings, encoder=encoder, atomizer=atomizer), generation=False
    )
    video, creative = clip(8)
    gate = asyncio.Event()

    async def gated_stream():
        messages = list(ingest_messages(video, creative))
        yield messages[0]
        await gate.wait()
        for m in messages[1:]:
            yield m

    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(ch)
        call = stub.Ingest(gated_stream(), metadata=auth())
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(running.stop(10))
        await asyncio.sleep(0.3)
        # New calls are refused while draining, the in-flight one completes.
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Search(knowledge_pb2.SearchRequest(selling_points=["spins"]), metadata=auth(), timeout=2)
        gate.set()
        reply = await call
        await stopping
    assert reply.entry.id == hashlib.sha256(video).hexdigest()


async def test_qdrant_server_backend_serves_the_same_api(settings, encoder, atomizer):
    """The production backend (qdrant-client) behind the same KnowledgeBase and RPCs. No Qdrant server can
    run here, so qdrant-client's local mode stands in for it: the client calls are the same."""
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
            video, creative = clip(40, motions=["orbit"])
            entry = (await ingest(stub, video, creative)).entry
            assert (await ingest(stub, video, creative)).already_existed
            reply = await stub.Search(
                knowledge_pb2.SearchRequest(selling_points=creative.selling_points), metadata=auth()
            )
            assert reply.references[0].entry.id == entry.id
            other = await stub.Search(
                knowledge_pb2.SearchRequest(selling_points=creative.selling_points), metadata=auth(OTHER_KEY)
            )
            assert list(other.references) == []
            await stub.Delete(knowledge_pb2.DeleteRequest(id=entry.id), metadata=auth())
            assert kb.count() == 0
    finally:
        await running.stop(0.5)
