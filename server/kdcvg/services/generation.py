"""GenerationService: maps Generate to the GenerationPipeline and its events to stream messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from kdcvg.errors import InvalidInput
from kdcvg.generation.pipeline import (
    GenerateParams,
    GenerationPipeline,
    Progress,
    ReferencesChosen,
    Scores,
    Summary,
    VideoChunk,
)
from kdcvg.interceptors import current_tenant
from kdcvg.services.errors import grpc_errors
from kdcvg.services.knowledge import category_name, score_parts_to_proto
from kdcvg.services.scoring import summary_to_proto
from kdcvg.v1 import generation_pb2, generation_pb2_grpc

MODES = {
    generation_pb2.KNOWLEDGE_MODE_UNSPECIFIED: "auto",
    generation_pb2.KNOWLEDGE_MODE_OFF: "off",
    generation_pb2.KNOWLEDGE_MODE_SEMANTIC: "semantic",
    generation_pb2.KNOWLEDGE_MODE_FULL: "full",
}


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, pipeline: GenerationPipeline) -> None:
        self.pipeline = pipeline

    @grpc_errors
    async def Generate(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        o = request.options
        if o.knowledge_mode not in MODES:
            raise InvalidInput(f"unknown knowledge mode {o.knowledge_mode}")
        if request.product_image:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "product_image conditioning is not available yet in this build; leave it empty",
            )
        params = self.pipeline.validate(
            GenerateParams(
                product=request.product,
                selling_points=list(request.selling_points),
                category=category_name(request.category, required=False),
                frames=o.frames,
                width=o.width,
                height=o.height,
                steps=o.steps,
                guidance=o.guidance,
                seed=o.seed,
                mode=MODES[o.knowledge_mode],
                fps=o.fps,
                prior_scale=o.prior_scale,
                reference_id=request.reference_id,
                score=o.score,
            )
        )
        remaining = context.time_remaining()
        estimate = self.pipeline.estimate_seconds(params)
        if remaining is not None and remaining < estimate:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"this generation needs about {estimate:.1f} s at the current load ({params.steps} steps) and "
                f"the deadline leaves {remaining:.1f} s: raise the deadline or lower options.steps",
            )
        async for event in self.pipeline.generate(current_tenant(), params):
            yield to_proto(event)


def to_proto(event: object) -> generation_pb2.GenerateResponse:
    if isinstance(event, ReferencesChosen):
        ref = event.reference
        return generation_pb2.GenerateResponse(
            references=generation_pb2.ReferencesChosen(
                retrieval_id=event.retrieval_id,
                entry_id=ref.entry.id,
                caption=ref.entry.caption,
                score=score_parts_to_proto(ref.parts),
                prior_id=event.prior_id,
            )
        )
    if isinstance(event, Progress):
        return generation_pb2.GenerateResponse(
            progress=generation_pb2.Progress(step=event.step, total_steps=event.total, stage=event.stage)
        )
    if isinstance(event, VideoChunk):
        return generation_pb2.GenerateResponse(
            video=generation_pb2.VideoChunk(
                data=event.data, offset=event.offset, last=event.last, mime_type="video/mp4"
            )
        )
    if isinstance(event, Scores):
        return generation_pb2.GenerateResponse(scores=summary_to_proto(event.summary))
    if isinstance(event, Summary):
        return generation_pb2.GenerateResponse(
            summary=generation_pb2.GenerateSummary(
                seed=event.seed,
                stage_millis=event.stage_millis,
                frames=event.frames,
                width=event.width,
                height=event.height,
                video_bytes=event.video_bytes,
                sha256=event.sha256,
            )
        )
    raise TypeError(f"unknown generation event {event!r}")
