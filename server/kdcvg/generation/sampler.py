"""Continuous batching of rectified-flow sampling across requests.

Every active request is one row of each sampler step (two with classifier-free guidance: its conditioned
and unconditioned halves go into the same doubled batch). Rows carry their own timestep, guidance and
text, so a request can join at any step boundary and leave (finished or cancelled) at the next one:
a cancelled request stops within one step and frees its slot at once. Steps run in one worker thread;
the event loop only moves requests in and out and forwards progress.

A job may carry a motion prior (a LoRA): rows of one step may use different LoRAs, or none. The step puts
each job's LoRA in a device slot (if it is not there yet) and runs the forward pass with the slot lock
held, so a concurrent LoadPrior never changes a slot mid-step. A step takes at most as many distinct LoRAs
as there are slots; jobs beyond that wait for a later step (rotation keeps it fair).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kdcvg.errors import Overloaded
from kdcvg.models import rectified_flow
from kdcvg.priors.cache import DeviceSlots
from kdcvg.priors.lora import LoRAWeights, use_lora

log = logging.getLogger("kdcvg.sampler")


@dataclass(eq=False)  # jobs compare by identity
class SampleJob:
    """One request's sampling state. `progress` is called on the event loop after each of its steps."""

    tokens: torch.Tensor  # (L, D) text token states
    mask: torch.Tensor  # (L,) bool
    timesteps: list[float]  # steps + 1 values from 1 (noise) down to 0
    guidance: float
    latents: torch.Tensor  # (C, T, h, w), starts as noise
    progress: Callable[[int, int], None] | None = None
    lora: LoRAWeights | None = None  # the motion prior of this request (host copy), or none
    lora_scale: float = 1.0
    step: int = 0
    cancelled: bool = False
    done: asyncio.Future = field(default=None)  # type: ignore[assignment]

    @property
    def total(self) -> int:
        return len(self.timesteps) - 1


class BatchedSampler:
    """Runs the sampler steps of all in-flight jobs as shared batches.

    `max_rows` bounds the rows of one forward pass (a job takes one row, two with guidance > 1);
    `max_jobs` bounds the jobs in flight, beyond which `submit` raises Overloaded.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_rows: int = 16,
        max_jobs: int = 32,
        slots: DeviceSlots | None = None,
    ) -> None:
        self.model = model
        self.slots = slots
        self.max_rows = max_rows
        self.max_jobs = max_jobs
        self._jobs: list[SampleJob] = []
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        # Seconds per step by batch rows, for deadline estimates; refined by every step run.
        self._step_seconds: dict[int, float] = {}
        self.steps_run = 0
        self.rows_run = 0

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._jobs)

    def estimate_seconds(self, steps: int, extra_rows: int = 2) -> float:
        """Sampling time of a new job of `steps` steps, given the jobs in flight now."""
        with self._lock:
            rows = min(self.max_rows, extra_rows + sum(_rows(j) for j in self._jobs))
        known = sorted(self._step_seconds.items())
        if not known:
            return 0.0
        per_step = min(known, key=lambda kv: abs(kv[0] - rows))[1] * max(1.0, rows / max(1, known[-1][0]))
        return per_step * steps

    def calibrate(self) -> float:
        """Runs one guided step on noise (warms the model up) and records its time; returns seconds."""
        tokens, mask = self.model.null_tokens(1, 1)
        job = SampleJob(tokens[0], mask[0], [1.0, 0.5], 2.0, noise(tuple(self.model.latent_shape), 0))
        started = time.perf_counter()
        self._step([job])
        elapsed = time.perf_counter() - started
        self._step_seconds[2] = elapsed
        return elapsed

    async def submit(self, job: SampleJob) -> torch.Tensor:
        """Samples the job; returns its final latents. Cancelling the caller stops it within one step."""
        if self._closed:
            raise Overloaded("the sampler is shutting down")
        loop = asyncio.get_running_loop()
        job.done = loop.create_future()
        with self._lock:
            if len(self._jobs) >= self.max_jobs:
                raise Overloaded(
                    f"{len(self._jobs)} generations in flight, the limit (KDCVG_MAX_GENERATIONS); retry later"
                )
            self._jobs.append(job)
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="kdcvg-sampler")
        assert self._wake is not None
        self._wake.set()
        try:
            return await job.done
        finally:
            job.cancelled = True  # whatever the reason we stop waiting, its slot is freed at the next step
            self._remove(job)

    def _remove(self, job: SampleJob) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while not self._closed:
            with self._lock:
                live = [j for j in self._jobs if not j.cancelled and not j.done.done()]
            if not live:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = _take_rows(live, self.max_rows, self.slots.n if self.slots is not None else 0)
            try:
                started = time.perf_counter()
                await loop.run_in_executor(None, self._step, batch)
                rows = sum(_rows(j) for j in batch)
                elapsed = time.perf_counter() - started
                prev = self._step_seconds.get(rows)
                self._step_seconds[rows] = elapsed if prev is None else 0.8 * prev + 0.2 * elapsed
                self.steps_run += 1
                self.rows_run += rows
            except Exception as exc:  # a failed step fails its jobs, never the sampler
                log.exception("sampler step failed")
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(exc)
                continue
            for job in batch:
                if job.cancelled or job.done.done():
                    continue
                if job.progress is not None:
                    job.progress(job.step, job.total)
                if job.step >= job.total:
                    job.done.set_result(job.latents)
            # Rotate so that a full batch does not starve the jobs behind it.
            with self._lock:
                for job in batch:
                    if job in self._jobs:
                        self._jobs.remove(job)
                        self._jobs.append(job)

    @torch.inference_mode()
    def _step(self, batch: list[SampleJob]) -> None:
        x = torch.stack([j.latents for j in batch])
        t = torch.tensor([j.timesteps[j.step] for j in batch], dtype=torch.float32)
        t_next = torch.tensor([j.timesteps[j.step + 1] for j in batch], dtype=torch.float32)
        guided = [j.guidance > 1.0 for j in batch]
        uncond_rows = [i for i, g in enumerate(guided) if g]
        # The unconditioned half reads the empty text, as the model saw it when captions were dropped.
        null, null_mask = self.model.null_tokens(len(uncond_rows), max(int(j.tokens.shape[0]) for j in batch))
        length = null.shape[1]
        tokens = torch.zeros(len(batch), length, batch[0].tokens.shape[-1], dtype=null.dtype)
        mask = torch.zeros(len(batch), length, dtype=torch.bool)
        for i, j in enumerate(batch):
            tokens[i, : j.tokens.shape[0]] = j.tokens
            mask[i, : j.mask.shape[0]] = j.mask
        # One doubled batch: the conditioned rows, then the unconditioned half of the guided ones.
        x_in = torch.cat([x, x[uncond_rows]])
        t_in = torch.cat([t, t[uncond_rows]])
        tok_in = torch.cat([tokens, null])
        mask_in = torch.cat([mask, null_mask])
        if any(j.lora is not None for j in batch):
            if self.slots is None:
                raise RuntimeError("a job carries a motion prior but this sampler has no LoRA slots")
            with self.slots.lock:
                protect = {j.lora.meta["uid"] for j in batch if j.lora is not None}
                index = [self.slots.ensure(j.lora, protect)[0] if j.lora is not None else -1 for j in batch]
                scale = [j.lora_scale for j in batch]
                # The unconditioned half of a guided row uses its row's LoRA too (as VMC samples).
                lora = self.slots.batch(
                    index + [index[i] for i in uncond_rows], scale + [scale[i] for i in uncond_rows]
                )
                with use_lora(lora):
                    v = self.model.velocity(x_in, t_in, tok_in, mask_in)
        elif self.slots is not None:
            with self.slots.lock:
                v = self.model.velocity(x_in, t_in, tok_in, mask_in)
        else:
            v = self.model.velocity(x_in, t_in, tok_in, mask_in)
        v_cond = v[: len(batch)].clone()
        for k, i in enumerate(uncond_rows):
            v_cond[i] = rectified_flow.guide(v_cond[i], v[len(batch) + k], batch[i].guidance)
        x_next = rectified_flow.euler_step(x, v_cond, t.view(-1, 1, 1, 1, 1), t_next.view(-1, 1, 1, 1, 1))
        for i, j in enumerate(batch):
            j.latents = x_next[i]
            j.step += 1

    async def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            if job.done is not None and not job.done.done():
                job.done.set_exception(Overloaded("the sampler shut down before this generation finished"))
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)


def _rows(job: SampleJob) -> int:
    return 2 if job.guidance > 1.0 else 1


def _take_rows(jobs: list[SampleJob], max_rows: int, max_loras: int = 0) -> list[SampleJob]:
    """Jobs for the next step, in order: at most `max_rows` rows and `max_loras` distinct LoRAs."""
    taken: list[SampleJob] = []
    rows = 0
    loras: set[str] = set()
    for job in jobs:
        if rows + _rows(job) > max_rows and taken:
            break
        if job.lora is not None:
            uid = job.lora.meta["uid"]
            if uid not in loras and max_loras and len(loras) >= max_loras:
                continue  # waits for a step with a free slot
            loras.add(uid)
        taken.append(job)
        rows += _rows(job)
    return taken


def noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of a job, reproducible from its seed alone (independent of batch-mates)."""
    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn(shape, generator=generator)


def new_seed() -> int:
    return int(np.random.default_rng().integers(1, 2**63 - 1))
