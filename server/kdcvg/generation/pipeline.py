"""One Generate request end to end: retrieve, condition, sample (batched with other requests), decode, mux.

The pipeline yields domain events in stream order; the gRPC service turns them into messages.
Knowledge modes: `off` conditions on the request alone ("<product>: <point>; <point>"); `semantic` appends
the top reference's caption (its product and colour swapped for the request's) and its selling points to
the request text before it is encoded, so the text encoder's token states, and the DiT's cross-attention
over them, see both the advertiser's selling points and how the reference creative shows its product.
`full` (semantic + the reference's motion LoRA) needs motion priors, which land later.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import torch

from kdcvg.errors import InvalidInput
from kdcvg.generation.sampler import BatchedSampler, SampleJob, new_seed, noise
from kdcvg.knowledge.base import KnowledgeBase, Reference
from kdcvg.media.video import encode_mp4
from kdcvg.models import rectified_flow
from kdcvg.text.encoder import TextEncoder

MODES = ("off", "semantic")
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


@dataclass
class ReferencesChosen:
    retrieval_id: str
    reference: Reference


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


def semantic_text(prompt: str, product: str, reference: Reference) -> str:
    """The request fused with the reference: its caption, with the reference's own product (and the colour in
    front of it) replaced by ours, then its selling points. The caption says how the reference moves; the
    swap keeps its product and colour from leaking into what we draw."""
    entry = reference.entry
    caption = entry.caption.strip().rstrip(".")
    if entry.product:
        pattern = rf"\b(?:(?:{_COLOURS})\s+)?{re.escape(entry.product)}\b"
        caption = re.sub(pattern, product, caption, count=1, flags=re.IGNORECASE)
    return f"{prompt}. {caption}. " + "; ".join(entry.selling_points)


class GenerationPipeline:
    def __init__(
        self,
        *,
        kb: KnowledgeBase,
        text_encoder: TextEncoder,
        model: torch.nn.Module,
        sampler: BatchedSampler,
        max_steps: int = 200,
        max_text_chars: int = 200,
    ) -> None:
        self.kb = kb
        self.text_encoder = text_encoder
        self.model = model
        self.sampler = sampler
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
        return GenerateParams(
            p.product.strip(), points, p.category, *native, steps, guidance, p.seed or new_seed(), p.mode, fps
        )

    def estimate_seconds(self, p: GenerateParams) -> float:
        return self.sampler.estimate_seconds(p.steps, extra_rows=2 if p.guidance > 1 else 1)

    async def generate(self, tenant: str, p: GenerateParams) -> AsyncIterator[Event]:
        """Events in stream order. Closing the iterator (a cancelled call) stops sampling within one step."""
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        text = prompt_text(p.product, p.selling_points)
        if p.mode != "off":
            result = await self.kb.search(tenant, p.selling_points, product=p.product, category=p.category, limit=1)
            stages["retrieve"] = (time.perf_counter() - t0) * 1000
            if result.references:
                yield ReferencesChosen(result.retrieval_id, result.references[0])
                text = semantic_text(text, p.product, result.references[0])
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

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor):  # noqa: ANN202 - np.ndarray (T, H, W, 3) uint8
        return self.model.decode(latents[None])[0].numpy()
