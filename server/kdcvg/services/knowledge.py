"""KnowledgeService: maps RPCs to the KnowledgeBase and its errors to status codes. No retrieval logic here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import grpc

from kdcvg import categories
from kdcvg.errors import InvalidInput, KdcvgError, TooLarge
from kdcvg.interceptors import current_tenant
from kdcvg.knowledge.base import Entry, IngestMeta, KnowledgeBase, SearchResult
from kdcvg.metrics import ServerMetrics
from kdcvg.retrieval.ranking import RankedCandidate
from kdcvg.services.errors import grpc_errors
from kdcvg.text.atomizer import SemanticUnit
from kdcvg.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc

RANKINGS = {
    knowledge_pb2.RANKING_UNSPECIFIED: "search_t2v",
    knowledge_pb2.RANKING_SEARCH_T2V: "search_t2v",
    knowledge_pb2.RANKING_COSINE: "cosine",
}


def unit_to_proto(u: SemanticUnit) -> common_pb2.SemanticUnit:
    return common_pb2.SemanticUnit(
        motion=u.motion, actor=u.actor, recipient=u.recipient, core=u.core, nominal=u.nominal
    )


def entry_to_proto(entry: Entry) -> common_pb2.Entry:
    return common_pb2.Entry(
        id=entry.id,
        tenant=entry.tenant,
        category=categories.BY_NAME.get(entry.category, common_pb2.CATEGORY_UNSPECIFIED),
        caption=entry.caption,
        selling_points=entry.selling_points,
        motion=entry.motion,
        product=entry.product,
        labels=entry.labels,
        frame_count=entry.frame_count,
        width=entry.width,
        height=entry.height,
        fps=entry.fps,
        keyframe_indices=entry.keyframes,
        units=[unit_to_proto(u) for u in entry.units],
        video_bytes=entry.video_bytes,
        created_unix_ms=entry.created_ms,
        has_prior=entry.has_prior,
    )


def score_parts_to_proto(p: RankedCandidate) -> common_pb2.ScoreParts:
    return common_pb2.ScoreParts(
        total_similarity=p.total_similarity,
        motion_similarity=p.motion_similarity,
        actor_similarity=p.actor_similarity,
        recipient_similarity=p.recipient_similarity,
        unit_similarity=p.unit_similarity,
        unit_score=p.unit_score,
        score=p.score,
        passed_total_threshold=p.passed_total_threshold,
        passed_motion_threshold=p.passed_motion_threshold,
        passed_actor_threshold=p.passed_actor_threshold,
    )


def search_to_proto(result: SearchResult) -> knowledge_pb2.SearchResponse:
    refs = [
        knowledge_pb2.Reference(entry=entry_to_proto(ref.entry), rank=rank, score=score_parts_to_proto(ref.parts))
        for rank, ref in enumerate(result.references, 1)
    ]
    return knowledge_pb2.SearchResponse(
        references=refs,
        query_units=[unit_to_proto(u) for u in result.query_units],
        retrieval_id=result.retrieval_id,
        candidates=result.candidates,
        stage_micros=result.stage_micros,
    )


def category_name(value: int, *, required: bool) -> str | None:
    if value == common_pb2.CATEGORY_UNSPECIFIED:
        if required:
            raise InvalidInput(f"category is required; one of {', '.join(categories.NAMES)}")
        return None
    if value not in categories.BY_ENUM:
        raise InvalidInput(f"unknown category {value}; valid: {', '.join(categories.NAMES)}")
    return categories.BY_ENUM[value]


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, kb: KnowledgeBase, *, max_video_bytes: int, metrics: ServerMetrics | None = None) -> None:
        self.kb = kb
        self.max_video_bytes = max_video_bytes
        self.metrics = metrics

    @grpc_errors
    async def Ingest(  # noqa: N802
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest], context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.IngestResponse:
        try:
            return await self._ingest(request_iterator)
        except KdcvgError:
            # Read what the client is still sending before answering: a client whose upload is cut off
            # mid-write may report a transport error instead of our status (seen with grpc.aio clients).
            await self._drain(request_iterator)
            raise

    async def _drain(self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest]) -> None:
        budget = 2 * self.max_video_bytes
        with contextlib.suppress(Exception):
            async for message in request_iterator:
                budget -= message.ByteSize()
                if budget < 0:
                    return

    async def _ingest(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest]
    ) -> knowledge_pb2.IngestResponse:
        tenant = current_tenant()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidInput("the first Ingest message must carry `metadata`; video chunks follow it")
        m = first.metadata
        meta = IngestMeta(
            category=category_name(m.category, required=True) or "",
            caption=m.caption,
            selling_points=list(m.selling_points),
            motion=m.motion,
            product=m.product,
            labels=dict(m.labels),
        )
        meta = self.kb.validate_meta(meta)  # fail fast, before any bytes are spooled
        if m.total_bytes < 0:
            raise InvalidInput("metadata.total_bytes must not be negative")
        if m.total_bytes > self.max_video_bytes:
            raise TooLarge(f"video of {m.total_bytes} bytes exceeds the limit of {self.max_video_bytes} bytes")
        fd, spooled = self.kb.blobs.spool_file()
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = await self._spool(request_iterator, out)
            if size == 0:
                raise InvalidInput("no video bytes received: send the video as `chunk` messages after metadata")
            if m.total_bytes and size != m.total_bytes:
                raise InvalidInput(
                    f"stream ended after {size} of the {m.total_bytes} bytes announced in metadata.total_bytes"
                )
            if m.sha256 and m.sha256.lower() != digest:
                raise InvalidInput(f"sha256 mismatch: metadata says {m.sha256}, received bytes hash to {digest}")
            entry, existed = await self.kb.ingest(tenant, meta, spooled, digest, size)
        finally:
            Path(spooled).unlink(missing_ok=True)
        if self.metrics is not None:
            self.metrics.kb_entries_ingested.labels("existing" if existed else "created").inc()
        return knowledge_pb2.IngestResponse(entry=entry_to_proto(entry), already_existed=existed)

    async def _spool(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest], out: BinaryIO
    ) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        async for message in request_iterator:
            if message.WhichOneof("payload") != "chunk":
                raise InvalidInput("metadata may only be sent once, as the first Ingest message")
            size += len(message.chunk)
            if size > self.max_video_bytes:
                raise TooLarge(f"video exceeds the limit of {self.max_video_bytes} bytes (KDCVG_MAX_VIDEO_BYTES)")
            digest.update(message.chunk)
            out.write(message.chunk)
        out.flush()
        os.fsync(out.fileno())
        return digest.hexdigest(), size

    @grpc_errors
    async def Search(  # noqa: N802
        self, request: knowledge_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.SearchResponse:
        if request.ranking not in RANKINGS:
            raise InvalidInput(f"unknown ranking {request.ranking}")
        result = await self.kb.search(
            current_tenant(),
            list(request.selling_points),
            product=request.product,
            category=category_name(request.category, required=False),
            limit=request.limit or 5,
            ranking=RANKINGS[request.ranking],
        )
        if self.metrics is not None:
            for stage, micros in result.stage_micros.items():
                self.metrics.stage_latency.labels(stage).observe(micros / 1e6)
        return search_to_proto(result)

    @grpc_errors
    async def Get(
        self, request: knowledge_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.GetResponse:  # noqa: N802
        entry = await asyncio.to_thread(self.kb.get, current_tenant(), request.id)
        return knowledge_pb2.GetResponse(entry=entry_to_proto(entry))

    @grpc_errors
    async def ListEntries(  # noqa: N802
        self, request: knowledge_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.ListEntriesResponse:
        entries, token = await asyncio.to_thread(
            self.kb.list,
            current_tenant(),
            category=category_name(request.category, required=False),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return knowledge_pb2.ListEntriesResponse(entries=[entry_to_proto(e) for e in entries], next_page_token=token)

    @grpc_errors
    async def Delete(  # noqa: N802
        self, request: knowledge_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.DeleteResponse:
        await asyncio.to_thread(self.kb.delete, current_tenant(), request.id)
        return knowledge_pb2.DeleteResponse(id=request.id.strip().lower())

    @grpc_errors
    async def Feedback(  # noqa: N802
        self, request: knowledge_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.FeedbackResponse:
        event_id = await asyncio.to_thread(
            self.kb.feedback,
            current_tenant(),
            request.retrieval_id,
            request.entry_id,
            request.reward,
            request.note,
        )
        return knowledge_pb2.FeedbackResponse(event_id=event_id)
