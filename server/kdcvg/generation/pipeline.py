"""One Generate request end to end: retrieve, condition, sample (batched with other requests), decode, mux.

The pipeline yields domain events in stream order; the gRPC service turns them into messages.
Knowledge modes: `off` conditions on the request alone ("<product>: <point>; <point>"); `semantic` appends
the top reference's caption (its product and colour swapped for the request's) to the request text before
it is encoded, so the text encoder's token states, and the DiT's cross-attention
over them, see both the advertiser's selling points and how the reference creative shows its product.
`full` adds the reference's motion prior: its LoRA, distilled by PriorService.DistillPrior, is taken from
the prior cache (disk -> host -> device slot) and attached to this request's rows of the sampler batch only.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kdcvg.errors import FailedPrecondition, InvalidInput, NotFound
from kdcvg.generation.sampler import BatchedSampler, SampleJob, new_seed, noise
from kdcvg.knowledge.base import KnowledgeBase, Reference, SearchResult
from kdcvg.media.video import encode_mp4
from kdcvg.models import rectified_flow
from kdcvg.priors.cache import PriorCache
from kdcvg.priors.jobs import Distiller
from kdcvg.priors.lora import PriorFileError
from kdcvg.retrieval.ranking import RankedCandidate
from kdcvg.text.encoder import TextEncoder

MODES = ("off", "semantic", "full", "auto")  # auto: full if the reference has a prior, else semantic
CHUNK_BYTES = 64 * 1024


@dataclass
class GenerateParams:
    product: str
    selling_points: list[str]
    category: str | None = None
    frames: int = 0
    width: int = 0
    height: int = 0
    steps: int = 30
    guidance: float = 2.0
    seed: int = 0
    mode: str = "semantic"
    fps: int = 8
    prior_scale: float = 1.0
    reference_id: str = ""  # a pinned reference entry instead of retrieval
    score: bool = False  # score the video (ScoringService metrics) and send a Scores event before the summary


@dataclass
class Scores:
    summary: Any  # kdcvg.scoring.engine.Summary


@dataclass
class ReferencesChosen:
    retrieval_id: str
    reference: Reference
    prior_id: str = ""


@dataclass
class Progress:
    step: int
    total: int
    stage: str


@dataclass
class VideoChunk:
    data: bytes
    offset: int
    last: bool


@dataclass
class Summary:
    seed: int
    frames: int
    width: int
    height: int
    video_bytes: int
    sha256: str
    stage_millis: dict[str, float] = field(default_factory=dict)


Event = ReferencesChosen | Progress | VideoChunk | Summary


def prompt_text(product: str, selling_points: Sequence[str]) -> str:
    """The request as the model was trained to read it: "<product>: <point>; <point>"."""
    return f"{product.strip()}: " + "; ".join(p.strip() for p in selling_points)


# Colour adjectives that may precede a reference's product name; they describe the reference, not ours.
_COLOURS = (
    "red|orange|yellow|green|blue|purple|pink|white|black|brown|grey|gray|silver|gold|golden|beige|cream|navy|"
    "teal|mint|violet|turquoise|cyan|magenta|maroon|olive|ivory|tan|coral"
)


def fuse_reference(prompt: str, product: str, caption: str, reference_product: str) -> str:
    """The request fused with a reference creative: "<prompt>. <reference caption>", where the caption's own
    product (and the colour in front of it) is replaced by ours. The caption says how the reference moves;
    the swap keeps its product and colour from leaking into what we draw. The training script builds its
    semantic-mode texts with this same function, so the model has seen fused texts of this shape."""
    caption = caption.strip().rstrip(".")
    if reference_product:
        pattern = rf"\b(?:(?:{_COLOURS})\s+)?{re.escape(reference_product)}\b"
        caption = re.sub(pattern, lambda _: product, caption, count=1, flags=re.IGNORECASE)
    return f"{prompt}. {caption}."


def semantic_text(prompt: str, product: str, reference: Reference) -> str:
    return fuse_reference(prompt, product, reference.entry.caption, reference.entry.product)


class GenerationPipeline:
    def __init__(
        self,
        *,
        kb: KnowledgeBase,
        text_encoder: TextEncoder,
        model: torch.nn.Module,
        sampler: BatchedSampler,
        priors: PriorCache | None = None,
        distiller: Distiller | None = None,
        max_steps: int = 200,
        max_text_chars: int = 200,
    ) -> None:
        self.kb = kb
        self.text_encoder = text_encoder
        self.model = model
        self.sampler = sampler
        self.priors = priors
        self.scorer: Any = None  # kdcvg.scoring.engine.Scorer, set by the app when scoring is served
        self.distiller = distiller
        self.max_steps = max_steps
        self.max_text_chars = max_text_chars

    def validate(self, p: GenerateParams) -> GenerateParams:
        m = self.model
        if not p.product.strip():
            raise InvalidInput("product is empty: name the product the ad is for")
        if len(p.product) > self.max_text_chars:
            raise InvalidInput(f"product is longer than {self.max_text_chars} characters")
        points = self.kb.check_texts(p.selling_points)
        if p.mode not in MODES:
            raise InvalidInput(f"unknown knowledge mode {p.mode!r}")
        native = (m.frames, m.width, m.height)
        asked = (p.frames or m.frames, p.width or m.width, p.height or m.height)
        if asked != native:
            raise InvalidInput(
                f"this model generates {m.frames} frames of {m.width}x{m.height}; leave frames/width/height at 0 "
                f"or set them to those values (asked {asked[0]} frames of {asked[1]}x{asked[2]})"
            )
        steps = p.steps or 30
        if not 1 <= steps <= self.max_steps:
            raise InvalidInput(f"steps {steps} is out of range 1-{self.max_steps}")
        guidance = 2.0 if p.guidance == 0 else p.guidance
        if not 1.0 <= guidance <= 20.0:
            raise InvalidInput(f"guidance {guidance} is out of range 1-20 (1 turns guidance off)")
        fps = p.fps or 8
        if not 1 <= fps <= 60:
            raise InvalidInput(f"fps {fps} is out of range 1-60")
        scale = 1.0 if p.prior_scale == 0 else p.prior_scale
        if not 0.0 < scale <= 4.0:
            raise InvalidInput(f"prior_scale {scale} is out of range (0, 4]; 0 means the default 1.0")
        if p.reference_id and p.mode == "off":
            raise InvalidInput("reference_id needs a knowledge mode that uses references (SEMANTIC or FULL), not OFF")
        if p.mode == "full" and self.priors is None:
            raise FailedPrecondition("this server has no motion-prior cache configured; use knowledge mode SEMANTIC")
        if p.score and self.scorer is None:
            raise FailedPrecondition("this server has no scoring engine; leave options.score false")
        return GenerateParams(
            p.product.strip(),
            points,
            p.category,
            *native,
            steps,
            guidance,
            p.seed or new_seed(),
            p.mode,
            fps,
            scale,
            p.reference_id.strip().lower(),
            p.score,
        )

    def estimate_seconds(self, p: GenerateParams) -> float:
        return self.sampler.estimate_seconds(p.steps, extra_rows=2 if p.guidance > 1 else 1)

    async def generate(self, tenant: str, p: GenerateParams) -> AsyncIterator[Event]:
        """Events in stream order. Closing the iterator (a cancelled call) stops sampling within one step."""
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        text = prompt_text(p.product, p.selling_points)
        lora = None
        if p.mode != "off":
            if p.reference_id:
                result = await self._pinned(tenant, p.reference_id)
            else:
                result = await self.kb.search(tenant, p.selling_points, product=p.product, category=p.category, limit=1)
            stages["retrieve"] = (time.perf_counter() - t0) * 1000
            if not result.references and p.mode == "full":
                raise FailedPrecondition(
                    "knowledge mode FULL found no reference creative for these selling points in this tenant's "
                    "knowledge base: ingest creatives first, or use knowledge mode OFF"
                )
            if result.references:
                ref = result.references[0]
                if p.mode == "full" or (p.mode == "auto" and self.priors is not None):
                    lora = await self._prior(tenant, ref.entry.id, required=p.mode == "full")
                    stages["prior"] = (time.perf_counter() - t0) * 1000 - stages["retrieve"]
                yield ReferencesChosen(result.retrieval_id, ref, ref.entry.id if lora is not None else "")
                text = semantic_text(text, p.product, ref)
        t1 = time.perf_counter()
        tokens, mask = await asyncio.to_thread(self.text_encoder.encode_tokens, [text])
        stages["encode"] = (time.perf_counter() - t1) * 1000

        progress: asyncio.Queue[Progress] = asyncio.Queue()
        shape = tuple(self.model.latent_shape)
        job = SampleJob(
            tokens=torch.from_numpy(tokens[0]),
            mask=torch.from_numpy(mask[0]),
            timesteps=rectified_flow.sampling_timesteps(p.steps, self.model.default_shift()).tolist(),
            guidance=p.guidance,
            latents=noise(shape, p.seed),
            lora=lora,
            lora_scale=p.prior_scale,
            progress=lambda step, total: progress.put_nowait(Progress(step, total, "sample")),
        )
        t2 = time.perf_counter()
        sampling = asyncio.ensure_future(self.sampler.submit(job))
        try:
            while not sampling.done() or not progress.empty():
                getter = asyncio.ensure_future(progress.get())
                await asyncio.wait({getter, sampling}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            latents = sampling.result()
        finally:
            sampling.cancel()  # the caller went away: the job leaves the batch at the next step
        stages["sample"] = (time.perf_counter() - t2) * 1000

        t3 = time.perf_counter()
        frames = await asyncio.to_thread(self._decode, latents)
        stages["decode"] = (time.perf_counter() - t3) * 1000
        yield Progress(1, 1, "decode")
        t4 = time.perf_counter()
        video = await asyncio.to_thread(encode_mp4, frames, p.fps)
        stages["mux"] = (time.perf_counter() - t4) * 1000
        for offset in range(0, len(video), CHUNK_BYTES):
            data = video[offset : offset + CHUNK_BYTES]
            yield VideoChunk(data, offset, offset + len(data) >= len(video))
        if p.score:
            t5 = time.perf_counter()
            yield Scores(await self.score(frames, p))
            stages["score"] = (time.perf_counter() - t5) * 1000
        stages["total"] = (time.perf_counter() - t0) * 1000
        yield Summary(
            seed=p.seed,
            frames=int(frames.shape[0]),
            width=int(frames.shape[2]),
            height=int(frames.shape[1]),
            video_bytes=len(video),
            sha256=hashlib.sha256(video).hexdigest(),
            stage_millis=stages,
        )

    async def score(self, frames: np.ndarray, p: GenerateParams):  # noqa: ANN201 - engine.Summary
        """The ScoringService metrics of a generated clip, prompted with its product and selling points."""
        from kdcvg.scoring.engine import ScoreOptions

        if self.scorer is None:
            raise FailedPrecondition("this server has no scoring engine; leave options.score false")
        prompt = f"{p.product}: " + "; ".join(p.selling_points)  # the request text the reward model saw
        return await self.scorer.score_frames(frames, ScoreOptions(prompt=prompt, fps=float(p.fps)))

    async def _pinned(self, tenant: str, entry_id: str) -> SearchResult:
        entry = await asyncio.to_thread(self.kb.get, tenant, entry_id)
        parts = RankedCandidate(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False, False, False)
        return SearchResult([Reference(entry, parts)], [], "", 0, {})

    async def _prior(self, tenant: str, entry_id: str, *, required: bool):  # noqa: ANN202 - LoRAWeights | None
        assert self.priors is not None
        if not required and not await asyncio.to_thread(self.priors.exists, tenant, entry_id):
            return None
        try:
            weights, _tier = await asyncio.to_thread(self.priors.get, tenant, entry_id)
        except NotFound:
            if not required:
                return None
            raise FailedPrecondition(
                f"the chosen reference {entry_id} has no motion prior yet: distil it (`kdcvg prior distill "
                f"{entry_id}`, or `kdcvg prior distill-all` for the whole knowledge base), or use knowledge mode "
                "SEMANTIC"
            ) from None
        except PriorFileError as exc:
            raise FailedPrecondition(
                f"the motion prior of reference {entry_id} cannot be used ({exc}); distil it again"
            ) from None
        return weights

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor):  # noqa: ANN202 - np.ndarray (T, H, W, 3) uint8
        return self.model.decode(latents[None])[0].numpy()
