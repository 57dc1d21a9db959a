"""ScoringService: ScoreStream (frames or encoded chunks in, partial scores out) and the unary Score."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import numpy as np

from kdcvg.errors import InvalidInput, TooLarge
from kdcvg.media.video import VideoDecodeError, decode_video
from kdcvg.scoring.base import MetricResult
from kdcvg.scoring.engine import ScoreOptions, Scorer, ScoringSession, Summary
from kdcvg.services.errors import grpc_errors
from kdcvg.v1 import scoring_pb2, scoring_pb2_grpc


def options_from_proto(o: scoring_pb2.ScoreOptions) -> ScoreOptions:
    return ScoreOptions(
        metrics=tuple(m.strip().lower() for m in o.metrics if m.strip()),
        prompt=o.prompt,
        product_image=o.product_image,
        fps=o.fps,
    )


def metric_to_proto(r: MetricResult) -> scoring_pb2.MetricScore:
    return scoring_pb2.MetricScore(name=r.name, value=r.value, components=r.components, frames=r.frames)


def summary_to_proto(s: Summary) -> scoring_pb2.ScoreSummary:
    return scoring_pb2.ScoreSummary(
        metrics=[metric_to_proto(m) for m in s.metrics],
        unavailable=[scoring_pb2.MetricUnavailable(name=n, reason=r) for n, r in s.unavailable],
        frames=s.frames,
    )


def raw_frame(f: scoring_pb2.RawFrame, index: int) -> np.ndarray:
    if f.width <= 0 or f.height <= 0:
        raise InvalidInput(f"frame {index}: width and height must be positive, got {f.width}x{f.height}")
    expected = f.width * f.height * 3
    if len(f.rgb) != expected:
        raise InvalidInput(
            f"frame {index}: {len(f.rgb)} bytes of rgb for {f.width}x{f.height}; expected width*height*3 = {expected}"
        )
    return np.frombuffer(f.rgb, dtype=np.uint8).reshape(f.height, f.width, 3)


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(self, scorer: Scorer, *, max_video_bytes: int) -> None:
        self.scorer = scorer
        self.max_video_bytes = max_video_bytes

    async def _decode(self, data: bytes) -> tuple[np.ndarray, float]:
        try:
            video = await self.scorer.run(
                lambda: decode_video(data, max_frames=self.scorer.max_frames, max_pixels=self.scorer.max_pixels)
            )
        except VideoDecodeError as e:
            if "limit" in str(e):
                raise TooLarge(str(e)) from e
            raise InvalidInput(f"not a readable video: {e}") from e
        return video.frames, video.fps

    async def _read(self, requests: AsyncIterator[scoring_pb2.ScoreStreamRequest], session: ScoringSession) -> None:
        """Feeds the session from the request stream: raw frames as they come, an encoded file at its end."""
        chunks: list[bytes] = []
        size = 0
        kind = None
        async for req in requests:
            which = req.WhichOneof("payload")
            if which == "options":
                raise InvalidInput("options may be sent once, in the first message only")
            if which is None:
                raise InvalidInput("a ScoreStream message carried neither a frame nor a chunk")
            if kind is not None and which != kind:
                raise InvalidInput("send either raw frames or encoded chunks in one stream, not both")
            kind = which
            if which == "frame":
                session.push(raw_frame(req.frame, len(session.frames)))
            else:
                size += len(req.chunk)
                if size > self.max_video_bytes:
                    raise TooLarge(f"the encoded video exceeds the limit of {self.max_video_bytes} bytes")
                chunks.append(req.chunk)
        if kind == "chunk":
            frames, fps = await self._decode(b"".join(chunks))
            if not session.options.fps and fps > 0:
                session.fps = fps
            session.push(frames)
        session.close_input()

    @grpc_errors
    async def ScoreStream(  # noqa: N802
        self, request_iterator: AsyncIterator[scoring_pb2.ScoreStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scoring_pb2.ScoreStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "options":
            raise InvalidInput("the first ScoreStream message must carry `options`; frames or chunks follow it")
        session = self.scorer.open(options_from_proto(first.options))
        reader: asyncio.Task | None = None
        try:
            await session.prepare()
            reader = asyncio.create_task(self._read(request_iterator, session))
            reader.add_done_callback(lambda _t: session.close_input())
            async for partial in session.updates():
                yield scoring_pb2.ScoreStreamResponse(partial=metric_to_proto(partial))
            await reader  # raises the reader's error (bad frame, not a video, oversized)
            summary = await session.final()
            yield scoring_pb2.ScoreStreamResponse(summary=summary_to_proto(summary))
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            session.release()

    @grpc_errors
    async def Score(  # noqa: N802
        self, request: scoring_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoreResponse:
        options = options_from_proto(request.options)
        self.scorer.plan(options)  # bad options answer before the video is decoded
        if not request.video:
            raise InvalidInput("ScoreRequest.video is empty: send the encoded video file (e.g. an H.264 MP4)")
        if len(request.video) > self.max_video_bytes:
            raise TooLarge(f"the video of {len(request.video)} bytes exceeds the limit of {self.max_video_bytes}")
        frames, fps = await self._decode(request.video)
        if not options.fps and fps > 0:
            options = ScoreOptions(options.metrics, options.prompt, options.product_image, fps)
        summary = await self.scorer.score_frames(frames, options)
        return scoring_pb2.ScoreResponse(summary=summary_to_proto(summary))
