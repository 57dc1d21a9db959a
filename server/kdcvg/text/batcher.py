"""Micro-batching of concurrent encode calls on an asyncio loop.

One worker task collects the jobs that arrive within max_wait_ms of the first (up to max_batch texts), runs
them as one encoder call in a worker thread, and hands each caller its rows. Only one encoder call is in
flight at a time: on a few cores concurrent ORT runs only fight over threads, and while one batch runs the
next one fills up by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[np.ndarray] = field(repr=False)


_CLOSE = object()


class Claim:
    """The right to use an idle encoder for one call; see ``MicroBatcher.try_claim``."""

    __slots__ = ()


class MicroBatcher:
    """Batches concurrent `encode` / `encode_many` calls into single encoder calls."""

    def __init__(
        self, encoder: Encoder, *, max_batch: int = 32, max_wait_ms: float = 0.0, solo: Encoder | None = None
    ) -> None:
        """``solo``: the same model with more intra-op threads, for a claimed call whose caller knows that
        nothing else is running (``encode_claimed(..., alone=True)``); batches always use ``encoder``."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self._encoder: Encoder = encoder
        self._solo: Encoder | None = solo
        self.solo_runs = 0  # calls on the solo encoder
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        # Counters for metrics.
        self.batches_run = 0
        self.items = 0
        self._queue: asyncio.Queue[_Job | object] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._carry: _Job | None = None
        self._closed = False
        self._batch_running = False
        self._claim: Claim | None = None

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches_run if self.batches_run else 0.0

    async def encode(self, text: str) -> np.ndarray:
        """The embedding of one text, float32 (dim,)."""
        return (await self._submit([text]))[0]

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of several texts, float32 (n, dim), kept together in one batch."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        return await self._submit(list(texts))

    def try_claim(self) -> Claim | None:
        """Call on the event loop. A claim when the encoder is idle (no batch running or waiting, no claim
        held), else None. With a claim the caller encodes in its own worker thread (``encode_claimed``),
        saving the hand-off to the batcher's thread and back (a sequential Search's encode is 2 ms; each
        hand-off 0.1-0.5 ms); later callers queue for a batch meanwhile. ``encode_claimed`` gives the claim
        back; ``release`` gives back one that will not be used (its caller was cancelled)."""
        if self._closed or self._claim is not None or self._batch_running or self._carry is not None:
            return None
        if self._queue is not None and not self._queue.empty():
            return None
        self._claim = Claim()
        return self._claim

    def encode_claimed(
        self, claim: Claim, texts: Sequence[str], *, alone: bool = False, ready: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Encodes in the calling (worker) thread under ``claim``, then gives it back. ``alone``: the caller
        knows no other work is running, so the ``solo`` encoder (more threads) may take the idle cores.
        ``ready``: called once the texts are tokenized, before the model runs (see TextEncoder.prepare); with
        an encoder that cannot prepare, before encoding."""
        try:
            encoder = self._solo if alone and self._solo is not None else self._encoder
            batch = list(texts)
            prepare = getattr(encoder, "prepare", None)
            run = prepare(batch) if prepare is not None else partial(encoder.encode, batch)
            if ready is not None:
                ready()
            vectors = run()
            if encoder is not self._encoder:
                self.solo_runs += 1
        finally:
            self.release(claim)
        self.batches_run += 1
        self.items += len(texts)
        return vectors

    def release(self, claim: Claim) -> None:
        """Gives ``claim`` back; a no-op when it was given back already (a later claim stays held)."""
        if self._claim is claim:
            self._claim = None

    async def close(self) -> None:
        """Finish the jobs already queued, then stop the worker. Later calls raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        if self._worker is None:
            return
        assert self._queue is not None and self._executor is not None
        try:
            if not self._worker.done():
                self._queue.put_nowait(_CLOSE)
                await self._worker
        except Exception:
            log.exception("text encoder batcher worker failed")
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _submit(self, texts: list[str]) -> np.ndarray:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        if not all(isinstance(text, str) for text in texts):  # here, not in the batch it would fail
            raise TypeError("texts must be strings")
        if not texts:
            return await asyncio.to_thread(self._encoder.encode, texts)  # for the (0, dim) shape
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._worker.done():
            error = None if self._worker.cancelled() else self._worker.exception()
            raise RuntimeError("MicroBatcher worker has stopped") from error
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-encoder")
            self._worker = loop.create_task(self._run(), name="text-encoder-batcher")
        assert self._queue is not None
        job = _Job(texts, loop.create_future())
        self._queue.put_nowait(job)
        # A cancelled caller cancels its future; the worker skips it or drops its rows.
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            closing = False
            while not closing:
                jobs, closing = await self._collect()
                if jobs:
                    await self._run_batch(loop, jobs)
        finally:
            # Only reached with jobs left when the worker is cancelled (e.g. the loop shuts down):
            # fail them rather than leave their callers waiting.
            assert self._queue is not None
            left = [self._carry]
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            self._carry = None
            for job in left:
                if isinstance(job, _Job) and not job.future.done():
                    job.future.set_exception(RuntimeError("MicroBatcher stopped before running this job"))

    async def _collect(self) -> tuple[list[_Job], bool]:
        """The next batch: the first job, then whatever arrives within max_wait_ms; True if closing."""
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        if first is _CLOSE:
            return [], True
        assert isinstance(first, _Job)
        jobs, size = [first], len(first.texts)
        if size < self.max_batch and self._queue.qsize() < self.max_batch:
            # With max_wait_ms 0 an idle encoder starts at once (one loop turn lets callers that are
            # already running enqueue); batches then form from the jobs that arrive while one runs.
            await asyncio.sleep(self.max_wait_ms / 1000)
        while size < self.max_batch and not self._queue.empty():
            job = self._queue.get_nowait()
            if job is _CLOSE:
                return jobs, True
            assert isinstance(job, _Job)
            if job.future.done():  # its caller was cancelled while it waited
                continue
            if size + len(job.texts) > self.max_batch:
                self._carry = job  # a job's texts stay in one batch
                break
            jobs.append(job)
            size += len(job.texts)
        return jobs, False

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.done()]
        if not live:
            return
        texts = [text for job in live for text in job.texts]
        self._batch_running = True
        try:
            vectors = await loop.run_in_executor(self._executor, self._encoder.encode, texts)
        except Exception as exc:
            self._batch_running = False  # the callers get the error; the worker goes on
            log.exception("text encoder batch of %d texts failed", len(texts))
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        except asyncio.CancelledError:
            self._batch_running = False
            for job in live:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("MicroBatcher stopped while running this job"))
            raise
        self._batch_running = False
        self.batches_run += 1
        self.items += len(texts)
        start = 0
        for job in live:
            end = start + len(job.texts)
            if not job.future.done():
                job.future.set_result(vectors[start:end].copy())
            start = end
