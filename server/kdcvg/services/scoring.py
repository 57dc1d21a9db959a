"""ScoringService: ScoreStream (frames or encoded chunks in, partial scores out) and the unary Score."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator
from typing import BinaryIO

import grpc
import numpy as np

from kdcvg.errors import InvalidInput, TooLarge
from kdcvg.media.growing_buffer import GrowingBuffer, UploadAborted, streamable
from kdcvg.media.video import StreamInfo, VideoDecodeError, decode_video, iter_frames
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


class _UploadDecoder:
    """Decodes an encoded upload on its own thread while the chunks arrive, pushing frames into the session
    on the event loop; `done` resolves when the file is decoded, or raises what went wrong."""

    def __init__(self, session: ScoringSession, scorer: Scorer) -> None:
        self.session = session
        self.buffer = GrowingBuffer()
        self.error: Exception | None = None
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._limits = {"max_frames": scorer.max_frames, "max_pixels": scorer.max_pixels}
        threading.Thread(target=self._run, name="kdcvg-score-decode", daemon=True).start()

    def _run(self) -> None:
        error: Exception | None = None
        try:
            source: BinaryIO = self.buffer
            self.buffer.streaming = streamable(self.buffer)
            if not self.buffer.streaming:  # an index at the end: nothing decodes before the last byte
                source = io.BytesIO(self.buffer.whole())
            for frame in iter_frames(source, on_open=self._opened, **self._limits):
                if self.error is not None:
                    break
                self.loop.call_soon_threadsafe(self._push, frame)
        except UploadAborted:
            pass
        except VideoDecodeError as e:
            error = TooLarge(str(e)) if "limit" in str(e) else InvalidInput(f"not a readable video: {e}")
        except Exception as e:  # noqa: BLE001 - reported on the stream as INTERNAL by grpc_errors
            error = e
        self.loop.call_soon_threadsafe(self._finish, error)

    def _opened(self, info: StreamInfo) -> None:
        if info.fps > 0:
            self.loop.call_soon_threadsafe(self._set_fps, info.fps)

    def _set_fps(self, fps: float) -> None:
        if not self.session.options.fps:
            self.session.fps = fps

    def _push(self, frame: np.ndarray) -> None:
        if self.error is not None:
            return
        try:
            self.session.push(frame)
        except Exception as e:  # noqa: BLE001 - surfaced through `done`
            self.error = e
            self.buffer.abort()

    def _finish(self, error: Exception | None) -> None:
        if self.done.done():
            return
        error = self.error or error
        if error is not None:
            self.error = error
            self.done.set_exception(error)
        else:
            self.done.set_result(None)


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
        """Feeds the session from the request stream: raw frames as they come; an encoded file through a
        decoder that runs while it uploads (frames come out early unless the container keeps its index at
        the end, as a plain MP4 does: then they come once the last chunk is in)."""
        size = 0
        kind = None
        decoder: _UploadDecoder | None = None
        try:
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
                    continue
                size += len(req.chunk)
                if size > self.max_video_bytes:
                    raise TooLarge(f"the encoded video exceeds the limit of {self.max_video_bytes} bytes")
                if decoder is None:
                    decoder = _UploadDecoder(session, self.scorer)
                decoder.buffer.feed(req.chunk)
                if decoder.error is not None:
                    raise decoder.error
            if decoder is not None:
                decoder.buffer.finish()
                await decoder.done
        finally:
            if decoder is not None:
                decoder.buffer.abort()  # wakes a decoder still waiting for bytes; a no-op once it has ended
                if decoder.done.done() and not decoder.done.cancelled():
                    decoder.done.exception()  # raised above already, or nothing to raise
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
