"""Transport behaviour of the Python SDK (kdcvg_client) against small in-process fake servicers.

The fakes fail on demand and record what they saw; the real server is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kdcvg.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    scoring_pb2,
)
from kdcvg_client import (
    CATEGORY_NAMES,
    AsyncKdcvgClient,
    Cancelled,
    ClientConfig,
    DeadlineExceeded,
    InvalidArgument,
    KdcvgClient,
    KdcvgError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    parse_category,
)

API_KEY = "test-key-123"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, jitter=True)
VIDEO = bytes(range(256)) * 2500  # 640,000 bytes: several chunks at the test chunk size
CHUNK = 64 * 1024


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str], ...] = ()


@dataclass
class FakeKnowledge(knowledge_pb2_grpc.KnowledgeServiceServicer):
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    ingests: list[list[knowledge_pb2.IngestRequest]] = field(default_factory=list)
    delay: float = 0.0
    big_search: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, context: grpc.ServicerContext) -> Failure | None:
        with self.lock:
            self.calls.append((method, {k: str(v) for k, v in context.invocation_metadata()}))
            plan = self.failures.get(method)
            return plan.pop(0) if plan else None

    @staticmethod
    def _fail(failure: Failure, context: grpc.ServicerContext) -> None:
        if failure.trailers:
            context.set_trailing_metadata(failure.trailers)
        context.abort(failure.code, failure.message)

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def Ingest(self, request_iterator, context):
        failure = self._enter("Ingest", context)
        seen: list[knowledge_pb2.IngestRequest] = []
        with self.lock:
            self.ingests.append(seen)
        for request in request_iterator:
            seen.append(request)
            if failure and len(seen) == 2:  # fail mid-stream: metadata and one chunk arrived
                self._fail(failure, context)
        data = b"".join(r.chunk for r in seen[1:])
        entry = common_pb2.Entry(id=hashlib.sha256(data).hexdigest(), video_bytes=len(data))
        return knowledge_pb2.IngestResponse(entry=entry)

    def Search(self, request, context):
        if failure := self._enter("Search", context):
            self._fail(failure, context)
        references = [knowledge_pb2.Reference(rank=1, entry=common_pb2.Entry(id="e1", caption=request.product))]
        if self.big_search:
            references[0].entry.caption = "x" * 100_000
        return knowledge_pb2.SearchResponse(retrieval_id="r-1", references=references)

    def Get(self, request, context):
        if failure := self._enter("Get", context):
            self._fail(failure, context)
        time.sleep(self.delay)
        return knowledge_pb2.GetResponse(entry=common_pb2.Entry(id=request.id))

    def Delete(self, request, context):
        if failure := self._enter("Delete", context):
            self._fail(failure, context)
        return knowledge_pb2.DeleteResponse(id=request.id)

    def Feedback(self, request, context):
        if failure := self._enter("Feedback", context):
            self._fail(failure, context)
        return knowledge_pb2.FeedbackResponse(event_id="ev-1")


MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(5000)


@dataclass
class FakeGeneration(generation_pb2_grpc.GenerationServiceServicer):
    """Streams references, one progress event per step (20 ms apart), the video in 3 chunks, a summary."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def Generate(self, request, context) -> Iterator[generation_pb2.GenerateResponse]:
        # gRPC stops pulling from a cancelled handler, so the loop below may never see is_active() False.
        context.add_callback(lambda: None if self.finished.is_set() else self.cancelled.set())
        yield generation_pb2.GenerateResponse(
            references=generation_pb2.ReferencesChosen(retrieval_id="r-9", entry_id="e1")
        )
        steps = request.options.steps or 3
        for step in range(1, steps + 1):
            time.sleep(0.02)
            if not context.is_active():
                self.cancelled.set()
                return
            yield generation_pb2.GenerateResponse(
                progress=generation_pb2.Progress(step=step, total_steps=steps, stage="sample")
            )
        third = len(MP4) // 3
        for offset in (0, third, 2 * third):
            end = len(MP4) if offset == 2 * third else offset + third
            yield generation_pb2.GenerateResponse(
                video=generation_pb2.VideoChunk(
                    data=MP4[offset:end], offset=offset, last=end == len(MP4), mime_type="video/mp4"
                )
            )
        yield generation_pb2.GenerateResponse(scores=scoring_pb2.ScoreSummary(frames=16))
        yield generation_pb2.GenerateResponse(
            summary=generation_pb2.GenerateSummary(seed=7, video_bytes=len(MP4), sha256=hashlib.sha256(MP4).hexdigest())
        )
        self.finished.set()


@dataclass
class Server:
    target: str
    knowledge: FakeKnowledge
    generation: FakeGeneration

    def config(self, **overrides: object) -> ClientConfig:
        values: dict[str, object] = {
            "target": self.target,
            "api_key": API_KEY,
            "retry": FAST_RETRY,
            "timeout": 5.0,
        }
        values.update(overrides)
        return ClientConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[Server]:
    knowledge, generation = FakeKnowledge(), FakeGeneration()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(knowledge, grpc_server)
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(generation, grpc_server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield Server(f"127.0.0.1:{port}", knowledge, generation)
    grpc_server.stop(grace=None)


@pytest.fixture
def client(server: Server) -> Iterator[KdcvgClient]:
    with KdcvgClient(config=server.config()) as c:
        yield c


def unavailable(n: int, message: str = "try again") -> list[Failure]:
    return [Failure(grpc.StatusCode.UNAVAILABLE, message) for _ in range(n)]


# -- metadata, retries, deadlines ------------------------------------------------------------------


def test_api_key_is_sent_as_bearer_token(server: Server, client: KdcvgClient) -> None:
    client.search(["keeps drinks cold"])
    _, metadata = server.knowledge.calls[0]
    assert metadata["authorization"] == f"Bearer {API_KEY}"
    assert "kdcvg-python/" in metadata["user-agent"]


def test_search_is_retried_after_two_unavailable(server: Server, client: KdcvgClient) -> None:
    server.knowledge.failures["Search"] = unavailable(2)
    response = client.search(["keeps drinks cold"], product="flask", category="food_beverages")
    assert response.retrieval_id == "r-1"
    assert server.knowledge.count("Search") == 3
    assert all(m["authorization"] == f"Bearer {API_KEY}" for _, m in server.knowledge.calls)


def test_retries_stop_at_max_attempts(server: Server, client: KdcvgClient) -> None:
    server.knowledge.failures["Get"] = unavailable(10, "overloaded")
    with pytest.raises(Unavailable) as caught:
        client.get("abc")
    assert server.knowledge.count("Get") == 4
    assert caught.value.attempts == 4 and caught.value.message == "overloaded"


def test_feedback_is_not_retried(server: Server, client: KdcvgClient) -> None:
    server.knowledge.failures["Feedback"] = unavailable(1)
    with pytest.raises(Unavailable) as caught:
        client.feedback("r-1", "e1", 1.0)
    assert server.knowledge.count("Feedback") == 1
    assert caught.value.attempts == 1


def test_delete_is_retried_on_resource_exhausted_but_not_unavailable(server: Server, client: KdcvgClient) -> None:
    server.knowledge.failures["Delete"] = [Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")]
    assert client.delete("e1").id == "e1"
    assert server.knowledge.count("Delete") == 2
    server.knowledge.failures["Delete"] = unavailable(1)
    with pytest.raises(Unavailable):
        client.delete("e1")
    assert server.knowledge.count("Delete") == 3


def test_negative_pushback_stops_retries(server: Server, client: KdcvgClient) -> None:
    failure = Failure(grpc.StatusCode.UNAVAILABLE, "draining", (("grpc-retry-pushback-ms", "-1"),))
    server.knowledge.failures["Search"] = [failure]
    with pytest.raises(Unavailable):
        client.search(["x"])
    assert server.knowledge.count("Search") == 1


def test_message_over_size_limit_is_not_retried(server: Server) -> None:
    server.knowledge.big_search = True
    with KdcvgClient(config=server.config(max_receive_message_bytes=10_000)) as small:
        with pytest.raises(ResourceExhausted):
            small.search(["x"])
    assert server.knowledge.count("Search") == 1


def test_deadline_bounds_all_attempts(server: Server) -> None:
    server.knowledge.failures["Search"] = unavailable(1000)
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.05, jitter=False)
    with KdcvgClient(config=server.config(retry=patient)) as c:
        started = time.monotonic()
        # The last attempt may start with too little time left and end in DEADLINE_EXCEEDED instead.
        with pytest.raises((Unavailable, DeadlineExceeded)) as caught:
            c.search(["x"], timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert 3 <= caught.value.attempts < 20


def test_slow_call_raises_deadline_exceeded(server: Server, client: KdcvgClient) -> None:
    server.knowledge.delay = 1.0
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.get("abc", timeout=0.2)
    assert time.monotonic() - started < 0.8
    assert server.knowledge.count("Get") == 1


# -- error mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    ],
)
def test_errors_map_to_classes(
    server: Server, client: KdcvgClient, code: grpc.StatusCode, error: type[KdcvgError]
) -> None:
    server.knowledge.failures["Get"] = [Failure(code, "entry abc: nope")]
    with pytest.raises(error) as caught:
        client.get("abc")
    assert isinstance(caught.value, KdcvgError)
    assert caught.value.code == code
    assert caught.value.message == "entry abc: nope"
    assert caught.value.method == "/kdcvg.v1.KnowledgeService/Get"
    assert "entry abc: nope" in str(caught.value)


def test_unregistered_service_is_unimplemented(client: KdcvgClient) -> None:
    with pytest.raises(Unimplemented):
        client.list_priors()


def test_health(client: KdcvgClient) -> None:
    assert client.health() == "SERVING"


# -- ingest ----------------------------------------------------------------------------------------


def _check_ingest(attempt: list[knowledge_pb2.IngestRequest], video: bytes) -> None:
    first, *chunks = attempt
    assert first.WhichOneof("payload") == "metadata"
    assert first.metadata.total_bytes == len(video)
    assert first.metadata.sha256 == hashlib.sha256(video).hexdigest()
    assert all(r.WhichOneof("payload") == "chunk" and len(r.chunk) <= CHUNK for r in chunks)
    assert b"".join(r.chunk for r in chunks) == video


def test_ingest_sends_metadata_then_chunks(server: Server, client: KdcvgClient) -> None:
    response = client.ingest(
        VIDEO,
        category="CATEGORY_HOME_APPLIANCES",
        caption="a kettle boils",
        selling_points=["boils fast"],
        labels={"source": "test"},
        chunk_size=CHUNK,
    )
    assert response.entry.id == hashlib.sha256(VIDEO).hexdigest()
    [attempt] = server.knowledge.ingests
    _check_ingest(attempt, VIDEO)
    metadata = attempt[0].metadata
    assert metadata.category == common_pb2.CATEGORY_HOME_APPLIANCES
    assert metadata.labels == {"source": "test"} and list(metadata.selling_points) == ["boils fast"]


@pytest.mark.parametrize("kind", ["bytes", "path", "file"])
def test_retried_ingest_resends_from_the_start(server: Server, client: KdcvgClient, tmp_path, kind: str) -> None:
    server.knowledge.failures["Ingest"] = unavailable(1)
    if kind == "path":
        video: object = tmp_path / "clip.mp4"
        video.write_bytes(VIDEO)  # type: ignore[attr-defined]
    elif kind == "file":
        # Read from the current position: the prefix is not part of the video.
        video = io.BytesIO(b"PREFIX" + VIDEO)
        video.seek(6)
    else:
        video = VIDEO
    response = client.ingest(
        video,  # type: ignore[arg-type]
        category=1,
        caption="c",
        selling_points=["s"],
        chunk_size=CHUNK,
    )
    assert response.entry.id == hashlib.sha256(VIDEO).hexdigest()
    failed, retried = server.knowledge.ingests
    assert len(failed) == 2 and failed[0].WhichOneof("payload") == "metadata"
    _check_ingest(retried, VIDEO)


# -- categories ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [1, "CATEGORY_FOOD_BEVERAGES", "food_beverages", "Food_Beverages", "category_food_beverages"]
)
def test_category_names(value: str | int) -> None:
    assert parse_category(value) == common_pb2.CATEGORY_FOOD_BEVERAGES


@pytest.mark.parametrize("value", ["toys", "CATEGORY_UNSPECIFIED", 42])
def test_unknown_category_is_rejected_client_side(server: Server, client: KdcvgClient, value: str | int) -> None:
    with pytest.raises(ValueError, match="valid: food_beverages") as caught:
        client.ingest(b"x", category=value, caption="c", selling_points=["s"])
    assert all(name in str(caught.value) for name in CATEGORY_NAMES)
    assert server.knowledge.calls == []


# -- server streams (sync) -------------------------------------------------------------------------


def test_generate_stream_in_order(client: KdcvgClient) -> None:
    kinds = [e.WhichOneof("event") for e in client.generate("flask", ["cold"], category="food_beverages")]
    assert kinds == ["references"] + ["progress"] * 3 + ["video"] * 3 + ["scores", "summary"]


def test_generate_video_collects_and_checks(client: KdcvgClient) -> None:
    seen: list[str] = []
    video = client.generate_video(
        "flask",
        ["cold"],
        category="food_beverages",
        options={"steps": 2, "knowledge_mode": "semantic"},
        on_event=lambda e: seen.append(e.WhichOneof("event")),
    )
    assert video.mp4 == MP4 and video.summary.seed == 7 and video.retrieval_id == "r-9"
    assert video.scores is not None and video.scores.frames == 16
    assert len(seen) == 1 + 2 + 3 + 2


def test_unknown_generate_option_is_rejected(client: KdcvgClient) -> None:
    with pytest.raises(ValueError, match="stepz"):
        client.generate("flask", ["cold"], category=1, options={"stepz": 2})


def test_breaking_out_of_a_stream_cancels_it(server: Server, client: KdcvgClient) -> None:
    for event in client.generate("flask", ["cold"], category=1, options={"steps": 200}):
        if event.WhichOneof("event") == "progress":
            break
    assert server.generation.cancelled.wait(3.0)
    assert not server.generation.finished.is_set()


def test_cancel_then_next_raises_cancelled(server: Server, client: KdcvgClient) -> None:
    stream = client.generate("flask", ["cold"], category=1, options={"steps": 200})
    next(stream)
    assert stream.cancel()
    with pytest.raises(Cancelled):
        next(stream)
    assert server.generation.cancelled.wait(3.0)


def test_stream_deadline_covers_the_whole_stream(client: KdcvgClient) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        for _ in client.generate("flask", ["cold"], category=1, options={"steps": 200}, timeout=0.3):
            pass
    assert time.monotonic() - started < 1.0


# -- asyncio client --------------------------------------------------------------------------------


async def test_async_retry_and_auth(server: Server) -> None:
    server.knowledge.failures["Search"] = unavailable(2)
    async with AsyncKdcvgClient(config=server.config()) as c:
        response = await c.search(["cold"], ranking="cosine")
    assert response.retrieval_id == "r-1"
    assert server.knowledge.count("Search") == 3
    assert all(m["authorization"] == f"Bearer {API_KEY}" for _, m in server.knowledge.calls)


async def test_async_feedback_not_retried_and_errors_mapped(server: Server) -> None:
    server.knowledge.failures["Feedback"] = unavailable(1)
    server.knowledge.failures["Get"] = [Failure(grpc.StatusCode.NOT_FOUND, "no entry abc")]
    async with AsyncKdcvgClient(config=server.config()) as c:
        with pytest.raises(Unavailable):
            await c.feedback("r-1", "e1", -0.5)
        with pytest.raises(NotFound) as caught:
            await c.get("abc")
        assert await c.health() == "SERVING"
    assert server.knowledge.count("Feedback") == 1
    assert caught.value.message == "no entry abc" and caught.value.method.endswith("/Get")


async def test_async_deadline_bounds_retries(server: Server) -> None:
    server.knowledge.failures["Get"] = unavailable(1000)
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.05, jitter=False)
    async with AsyncKdcvgClient(config=server.config(retry=patient)) as c:
        started = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await c.get("abc", timeout=0.4)
    assert time.monotonic() - started < 0.9


async def test_async_retried_ingest_from_path(server: Server, tmp_path) -> None:
    server.knowledge.failures["Ingest"] = unavailable(1)
    path = tmp_path / "clip.mp4"
    path.write_bytes(VIDEO)
    async with AsyncKdcvgClient(config=server.config()) as c:
        response = await c.ingest(path, category="beauty_health", caption="c", selling_points=["s"], chunk_size=CHUNK)
    assert response.entry.id == hashlib.sha256(VIDEO).hexdigest()
    failed, retried = server.knowledge.ingests
    assert len(failed) == 2
    _check_ingest(retried, VIDEO)


def test_a_client_stream_cut_short_by_the_server_is_retried_as_unavailable() -> None:
    """grpc-aio turns the server's status into INTERNAL when a write fails after the server ended the
    stream (grpc/grpc#36066); the client retries idempotent streams on it and says what happened."""
    import random

    from kdcvg_client._retry import KNOWLEDGE, retry_delay
    from kdcvg_client.errors import Internal, from_rpc_error

    def internal(debug: str) -> grpc.aio.AioRpcError:
        empty = grpc.aio.Metadata()
        return grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, empty, empty, "Internal error from Core", debug)

    cut = internal('Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x7f>,)')
    other = internal("some other internal failure")
    policy, rng = RetryPolicy(initial_backoff=0.01, jitter=False), random.Random(0)
    assert retry_delay(policy, KNOWLEDGE + "Ingest", cut, 1, None, rng) == pytest.approx(0.01)
    assert retry_delay(policy, KNOWLEDGE + "Ingest", other, 1, None, rng) is None  # a real INTERNAL
    assert retry_delay(policy, KNOWLEDGE + "Delete", cut, 1, None, rng) is None  # not retried on UNAVAILABLE
    error = from_rpc_error(cut, KNOWLEDGE + "Ingest", attempts=3)
    assert isinstance(error, Internal) and "ended the request stream" in str(error)
    assert "Internal error from Core" in str(from_rpc_error(other, KNOWLEDGE + "Ingest"))


async def test_async_generate_video(server: Server) -> None:
    async with AsyncKdcvgClient(config=server.config()) as c:
        video = await c.generate_video("flask", ["cold"], category=1)
    assert video.mp4 == MP4 and len(video.references) == 1


async def test_async_leaving_the_block_cancels_the_stream(server: Server) -> None:
    async with AsyncKdcvgClient(config=server.config()) as c:
        async with c.generate("flask", ["cold"], category=1, options={"steps": 200}) as stream:
            async for event in stream:
                if event.WhichOneof("event") == "progress":
                    break
        assert await asyncio.to_thread(server.generation.cancelled.wait, 3.0)
        with pytest.raises(Cancelled):
            await stream.__anext__()


async def test_async_task_cancellation_cancels_the_call(server: Server) -> None:
    got_one = asyncio.Event()

    async def consume(c: AsyncKdcvgClient) -> None:
        async for _ in c.generate("flask", ["cold"], category=1, options={"steps": 200}):
            got_one.set()

    async with AsyncKdcvgClient(config=server.config()) as c:
        task = asyncio.create_task(consume(c))
        await asyncio.wait_for(got_one.wait(), 3.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(server.generation.cancelled.wait, 3.0)
    assert not server.generation.finished.is_set()
