"""The scoring engine: one session per video, fed frames as they arrive, emitting partial scores.

A session keeps what each metric can reuse between partial and final scores (the optical-flow energies of
frame pairs, the OCR of each frame), so a streamed video costs little more than a whole one. All metric
work runs on the engine's own thread pool, off the event loop and beside the sampler's thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdcvg.errors import InvalidInput, Overloaded, TooLarge
from kdcvg.scoring import motionx, product, tsscore
from kdcvg.scoring.base import MetricResult, MetricUnavailableError
from kdcvg.scoring.crscore import CRScoreClient

METRICS: tuple[str, ...] = ("motionx", "tsscore", "product", "reward", "crscore")
# Frames a metric waits for before its first partial score; later partials come each time the frame count
# doubles, so a T-frame stream costs about log2(T) recomputations of the cheap metrics.
FIRST_PARTIAL: dict[str, int] = {"motionx": 8, "tsscore": 8, "product": 4, "reward": 16}
DEFAULT_FPS = 8.0
MAX_FPS = 240.0
MAX_PROMPT_CHARS = 2000
MAX_PRODUCT_IMAGE_BYTES = 16 << 20


@dataclass(frozen=True)
class ScoreOptions:
    """What a caller asks: metric names (empty = all available), the prompt, a product image, the fps."""

    metrics: tuple[str, ...] = ()
    prompt: str = ""
    product_image: bytes = b""
    fps: float = 0.0


@dataclass
class Summary:
    """Final scores of a video: the metrics computed, those that could not be and why, frames received."""

    metrics: list[MetricResult]
    unavailable: list[tuple[str, str]]
    frames: int


@dataclass
class _Plan:
    wanted: tuple[str, ...]
    explicit: bool
    unavailable: dict[str, str] = field(default_factory=dict)


class Scorer:
    """Shared, loaded-once resources of scoring (OCR, reward model, text encoder, CRScore judge)."""

    def __init__(
        self,
        *,
        encode_text: Callable[[Sequence[str]], np.ndarray] | None,
        reward_model_dir: Path | None = None,
        crscore: CRScoreClient | None = None,
        threads: int = 2,
        max_frames: int = 256,
        max_pixels: int = 1280 * 720,
        max_sessions: int = 16,
    ) -> None:
        self.encode_text = encode_text
        self.reward_model_dir = reward_model_dir
        self.crscore = crscore
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self.max_sessions = max_sessions
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="kdcvg-score")
        self._reader: tsscore.TextReader | None = None
        self._reward: Any = None
        self._load_lock = threading.Lock()
        self.sessions = 0
        self.partials_sent = 0

    # --- shared resources, loaded on first use --------------------------------------------------------

    def text_reader(self) -> tsscore.TextReader:
        with self._load_lock:
            if self._reader is None:
                self._reader = tsscore.TextReader()
            return self._reader

    def reward_model(self) -> Any:
        from kdcvg.scoring.reward import load_reward_model

        with self._load_lock:
            if self._reward is None:
                self._reward = load_reward_model(self.reward_model_dir)
            return self._reward

    def warm_up(self) -> None:
        """Loads the OCR and the reward model now instead of on the first request. Blocking."""
        self.text_reader()
        self.reward_model()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def close(self) -> None:
        if self.crscore is not None:
            await self.crscore.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- sessions -------------------------------------------------------------------------------------

    def plan(self, options: ScoreOptions) -> _Plan:
        """Validates options and decides which metrics run; InvalidInput says what to fix."""
        unknown = [m for m in options.metrics if m not in METRICS]
        if unknown:
            raise InvalidInput(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METRICS)}")
        if len(options.prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"options.prompt has {len(options.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if options.fps < 0 or options.fps > MAX_FPS or options.fps != options.fps:
            raise InvalidInput(f"options.fps must be in (0, {MAX_FPS:g}] (0 = default {DEFAULT_FPS:g})")
        if len(options.product_image) > MAX_PRODUCT_IMAGE_BYTES:
            raise TooLarge(
                f"options.product_image is {len(options.product_image)} bytes; the limit is "
                f"{MAX_PRODUCT_IMAGE_BYTES} (send a PNG or JPEG of the product, a few hundred pixels wide)"
            )
        explicit = bool(options.metrics)
        wanted = tuple(dict.fromkeys(options.metrics)) if explicit else METRICS
        plan = _Plan(wanted, explicit)
        if "product" in wanted and not options.product_image:
            plan.unavailable["product"] = "no product image: send options.product_image (PNG or JPEG of the product)"
        if "reward" in wanted and not options.prompt.strip():
            plan.unavailable["reward"] = "no prompt: send options.prompt (the product and selling points)"
        if "reward" in wanted and self.encode_text is None:
            plan.unavailable["reward"] = "this server has no text encoder loaded"
        if "crscore" in wanted and self.crscore is None:
            plan.unavailable["crscore"] = (
                "no CRScore judge is configured: set KDCVG_CRSCORE_URL to an OpenAI-compatible vision endpoint"
            )
        return plan

    def open(self, options: ScoreOptions) -> ScoringSession:
        """A new session; RESOURCE_EXHAUSTED when `max_sessions` are already scoring."""
        plan = self.plan(options)
        if self.sessions >= self.max_sessions:
            raise Overloaded(f"{self.sessions} videos are being scored, the limit of this server; retry shortly")
        return ScoringSession(self, options, plan)

    async def score_frames(self, frames: np.ndarray, options: ScoreOptions) -> Summary:
        """Scores a whole clip (Score, Generate's scores): no partials, only the summary."""
        session = self.open(options)
        try:
            await session.prepare()
            session.push(frames)
            session.close_input()
            return await session.final()
        finally:
            session.release()


class ScoringSession:
    """One video being scored. `push` frames (cheap, on the loop), `updates` yields partials, then `final`."""

    def __init__(self, scorer: Scorer, options: ScoreOptions, plan: _Plan) -> None:
        self.scorer = scorer
        self.options = options
        self.plan = plan
        self.fps = options.fps or DEFAULT_FPS
        self.frames: list[np.ndarray] = []
        self.shape: tuple[int, int] | None = None
        self.input_closed = False
        self._arrived = asyncio.Event()
        self._energies: list[float] = []
        self._ocr: dict[int, list[tsscore.TextDetection]] = {}
        self._product_ref: product.ProductReference | None = None
        self._text_embedding: np.ndarray | None = None
        self._next_due = {m: FIRST_PARTIAL[m] for m in self.running if m in FIRST_PARTIAL}
        self._last: dict[str, MetricResult] = {}
        self._released = False
        scorer.sessions += 1

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(m for m in self.plan.wanted if m not in self.plan.unavailable)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scorer.sessions -= 1

    async def prepare(self) -> None:
        """Decodes the product image and embeds the prompt once, before frames are scored."""
        if "product" in self.running:
            try:
                image = product.decode_image(self.options.product_image)
            except ValueError as e:
                raise InvalidInput(f"options.product_image: {e}") from e
            try:
                self._product_ref = await self.scorer.run(product.ProductReference.from_image, image)
            except MetricUnavailableError as e:
                self.plan.unavailable["product"] = e.reason
        if "reward" in self.running:
            emb = await self.scorer.run(self.scorer.encode_text, [self.options.prompt])
            self._text_embedding = np.asarray(emb)[0]

    # --- input ----------------------------------------------------------------------------------------

    def push(self, frames: np.ndarray) -> None:
        """Appends frames ``(T, H, W, 3)`` or one ``(H, W, 3)``; checks size and limits."""
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InvalidInput(f"frames must be RGB uint8 (H, W, 3); got {frames.dtype} {frames.shape}")
        h, w = frames.shape[1:3]
        if h < 8 or w < 8:
            raise InvalidInput(f"frames of {w}x{h} are too small to score; send at least 8x8")
        if h * w > self.scorer.max_pixels:
            raise TooLarge(f"frames of {w}x{h} exceed the limit of {self.scorer.max_pixels} pixels; downscale them")
        if self.shape is None:
            self.shape = (h, w)
        elif (h, w) != self.shape:
            raise InvalidInput(
                f"frame {len(self.frames)} is {w}x{h} but the video started at {self.shape[1]}x{self.shape[0]}; "
                "every frame of a video must have the same size"
            )
        if len(self.frames) + len(frames) > self.scorer.max_frames:
            raise TooLarge(
                f"the video has more than {self.scorer.max_frames} frames, the limit of this server; "
                "send a shorter clip or subsample it"
            )
        self.frames.extend(frames)
        self._arrived.set()

    def close_input(self) -> None:
        self.input_closed = True
        self._arrived.set()

    # --- scoring --------------------------------------------------------------------------------------

    def _clip(self, n: int) -> np.ndarray:
        return np.stack(self.frames[:n])

    def _compute(self, name: str, n: int) -> MetricResult:
        """One metric on the first n frames; runs on a scoring thread."""
        if name == "motionx":
            if n < motionx.MIN_FRAMES:
                raise MetricUnavailableError(name, f"needs at least {motionx.MIN_FRAMES} frames, got {n}")
            for i in range(len(self._energies) + 1, n):
                self._energies.append(motionx.motion_energy(self.frames[i - 1], self.frames[i]))
            return motionx.motionx_from_energies(self._energies[: n - 1], self.fps, frames=n)
        clip = self._clip(n)
        if name == "tsscore":
            reader = self.scorer.text_reader()
            idx = tsscore.sample_indices(n)
            for i in idx:
                if i not in self._ocr:
                    self._ocr[i] = reader.read(self.frames[i], None)
            return tsscore.ts_from_detections(
                tsscore.exclude_product([self._ocr[i] for i in idx], clip[idx]), clip[idx]
            )
        if name == "product":
            assert self._product_ref is not None
            return product.product_score(clip, self._product_ref)
        if name == "reward":
            from kdcvg.scoring.reward import reward_score

            return reward_score(self.scorer.reward_model(), clip, self._text_embedding)
        raise AssertionError(name)

    async def _metric(self, name: str, n: int) -> MetricResult | None:
        try:
            result = await self.scorer.run(self._compute, name, n)
        except MetricUnavailableError as e:
            self.plan.unavailable[name] = e.reason
            return None
        self._last[name] = result
        return result

    async def updates(self) -> AsyncIterator[MetricResult]:
        """Partial scores as frames arrive; returns once the input is closed and every partial is out."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            n = len(self.frames)
            for name in self.running:
                due = self._next_due.get(name)
                if due is None or n < due or (self.input_closed and name in self._last):
                    continue
                self._next_due[name] = 2 * n
                result = await self._metric(name, n)
                if result is not None:
                    self.scorer.partials_sent += 1
                    yield result
            if self.input_closed and len(self.frames) == n:
                return

    async def final(self) -> Summary:
        """Every running metric on all frames (reusing a partial computed on all of them)."""
        n = len(self.frames)
        if n == 0:
            raise InvalidInput("the stream carried no frames: send options, then frames or an encoded video")
        for name in self.running:
            last = self._last.get(name)
            if last is not None and last.frames == n:
                continue
            if name == "crscore":
                assert self.scorer.crscore is not None
                try:
                    self._last[name] = await self.scorer.crscore.score(self._clip(n), self.options.prompt)
                except MetricUnavailableError as e:
                    self.plan.unavailable[name] = e.reason
                continue
            await self._metric(name, n)
        metrics = [self._last[m] for m in self.plan.wanted if m in self._last and m not in self.plan.unavailable]
        unavailable = [(m, self.plan.unavailable[m]) for m in self.plan.wanted if m in self.plan.unavailable]
        return Summary(metrics, unavailable, n)
