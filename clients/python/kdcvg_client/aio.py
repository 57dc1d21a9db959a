"""The asyncio client, ``AsyncKdcvgClient``; same methods as ``KdcvgClient``, awaited."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kdcvg.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    prior_pb2,
    prior_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

from . import _ingest, _requests
from ._config import ClientConfig
from ._priors import PriorCollector
from ._retry import (
    GENERATION,
    HEALTH_CHECK,
    KNOWLEDGE,
    PRIOR,
    SCORING,
    deadline_after,
    remaining,
    retry_delay,
)
from ._video import GeneratedVideo, VideoAssembler
from .errors import Cancelled, from_rpc_error

T = TypeVar("T")
R = TypeVar("R")


class AsyncServerStream(AsyncIterator[T]):
    """The responses of a streaming call, as an async iterator.

    Stopping early cancels the call: ``cancel()``, ``aclose()``, leaving an ``async with`` block, or
    cancelling the task that iterates. Errors surface as ``KdcvgError`` from ``__anext__``.
    """

    def __init__(self, call: grpc.aio.Call, method: str) -> None:
        self._call = call
        self._cancelled_here = False
        self.method = method

    def __aiter__(self) -> AsyncServerStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            message = await self._call.read()  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.method) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # grpc.aio reports a call cancelled by cancel() as CancelledError, which would read as a
            # cancellation of the caller's own task.
            if self._cancelled_here and not (task is not None and task.cancelling()):
                raise Cancelled("the call was cancelled by the client", method=self.method) from None
            self._call.cancel()
            raise
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """Cancels the call; False when it had already finished."""
        self._cancelled_here = True
        return bool(self._call.cancel())

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AsyncServerStream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __del__(self) -> None:
        call = getattr(self, "_call", None)
        if call is not None and not call.done():
            call.cancel()


def _channel(config: ClientConfig) -> grpc.aio.Channel:
    options = config.channel_options()
    if config.uses_tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=config.root_certificates)
        return grpc.aio.secure_channel(config.target, credentials, options=options)
    return grpc.aio.insecure_channel(config.target, options=options)


class AsyncKdcvgClient:
    """asyncio client for every kdcvg service; create it inside the running event loop.

    ``target`` and ``api_key`` override the same fields of ``config``. A ``channel`` passed in is used
    as is and is not closed by ``close()``. Every method takes ``timeout`` in seconds; None takes the
    config's default.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        config: ClientConfig | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        config = config or ClientConfig()
        if target is not None:
            config = replace(config, target=target)
        if api_key is not None:
            config = replace(config, api_key=api_key)
        self.config = config
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else _channel(config)
        self._metadata = config.call_metadata()
        self._rng = random.Random()
        self._knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self._channel)
        self._generation = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._scoring = scoring_pb2_grpc.ScoringServiceStub(self._channel)
        self._prior = prior_pb2_grpc.PriorServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing -----------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None, long: bool = False) -> float | None:
        if timeout is not None:
            return timeout
        return self.config.long_timeout if long else self.config.timeout

    async def _invoke(self, method: str, send: Callable[[float | None], Awaitable[R]], timeout: float | None) -> R:
        """Awaits ``send(seconds_left)`` until it succeeds, retrying only where ``_retry`` allows."""
        deadline = deadline_after(timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await send(remaining(deadline))
            except grpc.RpcError as error:
                delay = retry_delay(self.config.retry, method, error, attempt, deadline, self._rng)
                if delay is None:
                    raise from_rpc_error(error, method, attempts=attempt) from None
                await asyncio.sleep(delay)

    # The generated stubs are untyped, hence Any; each public method states its response type.
    async def _unary(
        self, method: str, rpc: grpc.aio.UnaryUnaryMultiCallable, request: object, timeout: float | None
    ) -> Any:
        return await self._invoke(
            method,
            lambda seconds: rpc(
                request, timeout=seconds, metadata=self._metadata, wait_for_ready=self.config.wait_for_ready
            ),
            timeout,
        )

    def _stream(
        self,
        method: str,
        rpc: grpc.aio.UnaryStreamMultiCallable | grpc.aio.StreamStreamMultiCallable,
        request: object,
        timeout: float | None,
    ) -> AsyncServerStream[Any]:
        call = rpc(request, timeout=timeout, metadata=self._metadata, wait_for_ready=self.config.wait_for_ready)
        return AsyncServerStream(call, method)

    # -- KnowledgeService ---------------------------------------------------------------------------

    async def ingest(
        self,
        video: _ingest.VideoLike,
        *,
        category: _requests.CategoryLike,
        caption: str,
        selling_points: Sequence[str],
        motion: str = "",
        product: str = "",
        labels: Mapping[str, str] | None = None,
        chunk_size: int = _ingest.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> knowledge_pb2.IngestResponse:
        """Stores a creative: metadata (with the size and sha256 computed here), then the bytes in chunks.

        ``video`` is bytes, a binary file object (read from its current position) or a path.
        """
        _ingest.check_chunk_size(chunk_size, self.config.max_send_message_bytes)
        metadata = _requests.ingest_metadata(
            category=category,
            caption=caption,
            selling_points=selling_points,
            motion=motion,
            product=product,
            labels=labels,
        )
        if isinstance(video, bytes | bytearray | memoryview):
            source = _ingest.VideoSource(video)
        else:
            # Hashing a file reads all of it; keep that off the event loop.
            source = await asyncio.to_thread(_ingest.VideoSource, video)
        with source:
            metadata.total_bytes = source.size
            metadata.sha256 = source.sha256

            async def send(seconds: float | None) -> knowledge_pb2.IngestResponse:
                attempt = _ingest.Attempt()
                try:
                    return await self._knowledge.Ingest(
                        _ingest.async_requests(metadata, source, chunk_size, attempt),
                        timeout=seconds,
                        metadata=self._metadata,
                        wait_for_ready=self.config.wait_for_ready,
                    )
                finally:
                    attempt.end()

            return await self._invoke(KNOWLEDGE + "Ingest", send, self._timeout(timeout, long=True))

    async def search(
        self,
        selling_points: Sequence[str],
        *,
        product: str = "",
        category: _requests.CategoryLike | None = None,
        limit: int = 5,
        ranking: _requests.RankingLike = "search_t2v",
        timeout: float | None = None,
    ) -> knowledge_pb2.SearchResponse:
        request = _requests.search_request(
            selling_points, product=product, category=category, limit=limit, ranking=ranking
        )
        return await self._unary(KNOWLEDGE + "Search", self._knowledge.Search, request, self._timeout(timeout))

    async def get(self, id: str, *, timeout: float | None = None) -> knowledge_pb2.GetResponse:
        request = knowledge_pb2.GetRequest(id=id)
        return await self._unary(KNOWLEDGE + "Get", self._knowledge.Get, request, self._timeout(timeout))

    async def list_entries(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        category: _requests.CategoryLike | None = None,
        timeout: float | None = None,
    ) -> knowledge_pb2.ListEntriesResponse:
        """One page of this tenant's entries in a stable order; ``page_size`` 0 is the server's default (100).
        Pass the same ``category`` with every page of a listing."""
        request = _requests.list_entries_request(page_size, page_token, category)
        return await self._unary(
            KNOWLEDGE + "ListEntries", self._knowledge.ListEntries, request, self._timeout(timeout)
        )

    async def iter_entries(
        self,
        category: _requests.CategoryLike | None = None,
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[common_pb2.Entry]:
        """Every entry (of ``category`` when given), page by page (iterate with ``async for``); ``timeout``
        applies to each page."""
        token = ""
        while True:
            page = await self.list_entries(page_size, token, category=category, timeout=timeout)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def delete(self, id: str, *, timeout: float | None = None) -> knowledge_pb2.DeleteResponse:
        request = knowledge_pb2.DeleteRequest(id=id)
        return await self._unary(KNOWLEDGE + "Delete", self._knowledge.Delete, request, self._timeout(timeout))

    async def feedback(
        self, retrieval_id: str, entry_id: str, reward: float, note: str = "", *, timeout: float | None = None
    ) -> knowledge_pb2.FeedbackResponse:
        request = _requests.feedback_request(retrieval_id, entry_id, reward, note)
        return await self._unary(KNOWLEDGE + "Feedback", self._knowledge.Feedback, request, self._timeout(timeout))

    # -- GenerationService --------------------------------------------------------------------------

    def generate(
        self,
        product: str,
        selling_points: Sequence[str],
        *,
        category: _requests.CategoryLike,
        options: _requests.OptionsLike | None = None,
        product_image: _requests.ImageLike | None = None,
        reference_id: str = "",
        timeout: float | None = None,
    ) -> AsyncServerStream[generation_pb2.GenerateResponse]:
        """The Generate event stream (iterate with ``async for``); ``options`` is a GenerateOptions or a
        dict of its fields (``knowledge_mode`` may be a name: "off", "semantic", "full"; unset: "full" when
        the reference has a motion prior, else "semantic"). ``reference_id`` pins that knowledge-base entry
        as the reference instead of retrieving one (NotFound when this tenant has no such entry)."""
        request = _requests.generate_request(
            product,
            selling_points,
            category=category,
            options=options,
            product_image=product_image,
            reference_id=reference_id,
        )
        return self._stream(
            GENERATION + "Generate", self._generation.Generate, request, self._timeout(timeout, long=True)
        )

    async def generate_video(
        self,
        product: str,
        selling_points: Sequence[str],
        *,
        category: _requests.CategoryLike,
        options: _requests.OptionsLike | None = None,
        product_image: _requests.ImageLike | None = None,
        reference_id: str = "",
        on_event: Callable[[generation_pb2.GenerateResponse], Awaitable[None] | None] | None = None,
        timeout: float | None = None,
    ) -> GeneratedVideo:
        """Runs ``generate`` to the end and returns the checked video; ``on_event`` (plain or async)
        sees every event."""
        assembler = VideoAssembler()
        stream = self.generate(
            product,
            selling_points,
            category=category,
            options=options,
            product_image=product_image,
            reference_id=reference_id,
            timeout=timeout,
        )
        async with stream:
            async for event in stream:
                assembler.add(event)
                if on_event is not None:
                    result = on_event(event)
                    if inspect.isawaitable(result):
                        await result
        return assembler.result()

    # -- ScoringService -----------------------------------------------------------------------------

    async def score(
        self,
        video: bytes | Path,
        *,
        metrics: Sequence[str] = (),
        prompt: str = "",
        product_image: _requests.ImageLike | None = None,
        fps: float = 0.0,
        timeout: float | None = None,
    ) -> scoring_pb2.ScoreResponse:
        request = _requests.score_request(video, metrics=metrics, prompt=prompt, product_image=product_image, fps=fps)
        return await self._unary(SCORING + "Score", self._scoring.Score, request, self._timeout(timeout, long=True))

    def score_stream(
        self,
        requests: Iterable[scoring_pb2.ScoreStreamRequest] | AsyncIterable[scoring_pb2.ScoreStreamRequest],
        *,
        timeout: float | None = None,
    ) -> AsyncServerStream[scoring_pb2.ScoreStreamResponse]:
        """Options first, then frames or chunks; ``requests`` is consumed once, by a gRPC task."""
        return self._stream(
            SCORING + "ScoreStream", self._scoring.ScoreStream, requests, self._timeout(timeout, long=True)
        )

    def score_frames(
        self,
        frames: Iterable[Any] | bytes | Path,
        *,
        metrics: Sequence[str] = (),
        prompt: str = "",
        product_image: _requests.ImageLike | None = None,
        fps: float = 0.0,
        timeout: float | None = None,
    ) -> AsyncServerStream[scoring_pb2.ScoreStreamResponse]:
        """ScoreStream over RGB uint8 frames ``(H, W, 3)`` sent one by one as they are produced (any iterable,
        e.g. a generator reading a camera or a decoder), or over an encoded video file (bytes or a path) sent
        in chunks. Yields ``partial`` scores as they become available, then the ``summary``."""
        requests = _requests.score_stream_requests(
            frames, metrics=metrics, prompt=prompt, product_image=product_image, fps=fps
        )
        return self.score_stream(requests, timeout=timeout)

    # -- PriorService -------------------------------------------------------------------------------

    async def list_priors(
        self, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> prior_pb2.ListPriorsResponse:
        """One page of this tenant's priors, by id; ``page_size`` 0 is the server's default (100)."""
        request = prior_pb2.ListPriorsRequest(page_size=page_size, page_token=page_token)
        return await self._unary(PRIOR + "ListPriors", self._prior.ListPriors, request, self._timeout(timeout))

    async def iter_priors(self, *, page_size: int = 0, timeout: float | None = None) -> AsyncIterator[prior_pb2.Prior]:
        """Every prior, page by page (iterate with ``async for``); ``timeout`` applies to each page."""
        token = ""
        while True:
            page = await self.list_priors(page_size, token, timeout=timeout)
            for prior in page.priors:
                yield prior
            token = page.next_page_token
            if not token:
                return

    async def load_prior(self, id: str, *, timeout: float | None = None) -> prior_pb2.LoadPriorResponse:
        """Brings a prior into the device tier; the reply says where it came from and how long it took."""
        request = prior_pb2.LoadPriorRequest(id=id)
        return await self._unary(PRIOR + "LoadPrior", self._prior.LoadPrior, request, self._timeout(timeout))

    async def unload_prior(self, id: str, *, timeout: float | None = None) -> prior_pb2.UnloadPriorResponse:
        """Drops a prior from the device and host tiers; its file stays on disk."""
        request = prior_pb2.UnloadPriorRequest(id=id)
        return await self._unary(PRIOR + "UnloadPrior", self._prior.UnloadPrior, request, self._timeout(timeout))

    def distill_prior(
        self,
        entry_id: str,
        *,
        rank: int = 0,
        steps: int = 0,
        learning_rate: float = 0.0,
        seed: int = 0,
        timeout: float | None = None,
    ) -> AsyncServerStream[prior_pb2.DistillPriorResponse]:
        """The DistillPrior event stream (iterate with ``async for``): one event per step (step,
        total_steps, loss), the last one also carries the stored ``prior``. Zero options take the server's
        defaults. Never retried; abandoning the stream cancels the distillation and nothing is stored."""
        request = _requests.distill_request(entry_id, rank=rank, steps=steps, learning_rate=learning_rate, seed=seed)
        return self._stream(
            PRIOR + "DistillPrior", self._prior.DistillPrior, request, self._timeout(timeout, long=True)
        )

    async def distill_prior_wait(
        self,
        entry_id: str,
        *,
        rank: int = 0,
        steps: int = 0,
        learning_rate: float = 0.0,
        seed: int = 0,
        on_event: Callable[[prior_pb2.DistillPriorResponse], Awaitable[None] | None] | None = None,
        timeout: float | None = None,
    ) -> prior_pb2.Prior:
        """Runs ``distill_prior`` to the end and returns the stored prior; ``on_event`` (plain or async)
        sees every event. An exception from ``on_event`` cancels the distillation."""
        collector = PriorCollector()
        stream = self.distill_prior(
            entry_id, rank=rank, steps=steps, learning_rate=learning_rate, seed=seed, timeout=timeout
        )
        async with stream:
            async for event in stream:
                collector.add(event)
                if on_event is not None:
                    result = on_event(event)
                    if inspect.isawaitable(result):
                        await result
        return collector.result()

    # -- health -------------------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The serving status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" is the server)."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(HEALTH_CHECK, self._health.Check, request, self._timeout(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # -- lifetime -----------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncKdcvgClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
