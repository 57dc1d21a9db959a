"""Distillation jobs: a knowledge-base entry in, a stored motion prior out, progress as it trains.

A job runs in a worker thread; the async iterator yields its progress. Closing the iterator (the caller
went away) stops the job at its next step and stores nothing, so no partial prior is ever registered.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import torch

from kdcvg.errors import InvalidInput, Overloaded
from kdcvg.knowledge.base import KnowledgeBase
from kdcvg.media.video import decode_video
from kdcvg.priors.cache import PriorCache, PriorInfo
from kdcvg.priors.distill import DistillCancelled, DistillConfig, distill
from kdcvg.text.encoder import TextEncoder

MAX_STEPS = 5000


@dataclass
class DistillStep:
    step: int
    total: int
    loss: float


@dataclass
class DistillDone:
    prior: PriorInfo
    seconds: float


class Distiller:
    def __init__(
        self,
        *,
        kb: KnowledgeBase,
        encoder: TextEncoder,
        model: torch.nn.Module,
        cache: PriorCache,
        defaults: DistillConfig | None = None,
        max_running: int = 1,
    ) -> None:
        self.kb, self.encoder, self.model, self.cache = kb, encoder, model, cache
        self.defaults = defaults or DistillConfig()
        self.max_running = max_running
        self.running = 0
        self.completed = 0
        self.cancelled = 0

    def config(self, rank: int = 0, steps: int = 0, learning_rate: float = 0.0, seed: int = 0) -> DistillConfig:
        """The request's options over the server defaults, checked."""
        d = self.defaults
        if rank < 0 or rank > 4096:
            raise InvalidInput(f"rank {rank} is out of range 1-4096 (0: the default {d.rank})")
        if steps < 0 or steps > MAX_STEPS:
            raise InvalidInput(f"steps {steps} is out of range 1-{MAX_STEPS} (0: the default {d.steps})")
        if not math.isfinite(learning_rate) or learning_rate < 0 or learning_rate > 1:
            raise InvalidInput(f"learning_rate {learning_rate} is out of range (0, 1] (0: the server default)")
        return replace(
            d,
            rank=min(rank or d.rank, self.cache.max_rank),
            steps=steps or d.steps,
            learning_rate=learning_rate or d.learning_rate,
            seed=seed or d.seed,
        )

    async def run(self, tenant: str, entry_id: str, cfg: DistillConfig) -> AsyncIterator[DistillStep | DistillDone]:
        entry = await asyncio.to_thread(self.kb.get, tenant, entry_id)
        if self.running >= self.max_running:
            raise Overloaded(
                f"{self.running} distillation(s) running, the limit (KDCVG_MAX_DISTILLATIONS); retry when one ends"
            )
        self.running += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[DistillStep] = asyncio.Queue()
        stop = threading.Event()

        def work() -> tuple:
            video = decode_video(self.kb.video(tenant, entry.id))
            tokens, mask = self.encoder.encode_tokens([entry.caption])
            weights, stats = distill(
                self.model,
                video.frames,
                torch.from_numpy(tokens[0]),
                torch.from_numpy(mask[0]),
                cfg,
                progress=lambda s, n, loss: loop.call_soon_threadsafe(events.put_nowait, DistillStep(s, n, loss)),
                stop=stop,
            )
            if stop.is_set():
                raise DistillCancelled("cancelled after the last step")
            weights.meta["entry_id"] = entry.id
            self.cache.store(tenant, entry.id, weights)
            return self.cache.info(tenant, entry.id), stats

        task = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            info, stats = task.result()
            self.completed += 1
            yield DistillDone(info, stats["seconds"])
        finally:
            if not task.done():
                stop.set()
                self.cancelled += 1
                # Wait for the worker to notice, so the slot is free and nothing is stored after we return.
                await asyncio.wait({task})
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a cancelled job's DistillCancelled is expected, not an error
            self.running -= 1
