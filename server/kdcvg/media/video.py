"""H.264 MP4 encoding and bounded, validated decoding of uploaded videos, all in memory (PyAV)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

# Demuxers an upload may use. Naming them keeps FFmpeg from probing playlist or concat formats that
# open other files, and from taking a still image for a video.
CONTAINERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"


class VideoDecodeError(ValueError):
    """The bytes are not a video this server can use; the message says why and what to send instead."""


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float  # 0.0 when the container does not say
    codec: str


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError("frames must be a uint8 numpy array of shape (T, H, W, 3)")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T >= 1, got {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        # yuv420p halves the chroma planes, so x264 needs even sides; padding would change the shape.
        raise ValueError(f"H.264 yuv420p needs even height and width, got {height}x{width}")


def encode_mp4(frames: np.ndarray, fps: float = 8, *, crf: int = 18) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) in an MP4; H and W must be even."""
    _check_frames(frames)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree off: with it, x264's SIMD lookahead gives different bytes for the same frames now and
        # then (about 1 encode in 1,000 here); without it, encodes are byte-for-byte repeatable.
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


@dataclass
class StreamInfo:
    """What the container says about its first video stream, known once it is open."""

    fps: float  # 0.0 when the container does not say
    codec: str
    declared_frames: int  # 0 when unknown


def iter_frames(
    source: BinaryIO,
    *,
    size_hint: int | None = None,
    max_frames: int = 512,
    max_pixels: int = 4096 * 4096,
    on_open: Callable[[StreamInfo], None] | None = None,
) -> Iterator[np.ndarray]:
    """Decode the first video stream of a file-like `source` to RGB frames, one at a time, as its bytes
    arrive (a source whose reads block until more data comes streams: frames come out while it is still
    being written, for containers that do not keep their index at the end). VideoDecodeError if unusable;
    `on_open` receives the stream's StreamInfo before the first frame."""
    described = f"({size_hint} bytes)" if size_hint is not None else "(a stream)"
    try:
        options = {"format_whitelist": CONTAINERS}
        if not source.seekable():
            # Opening probes ~20 frames to estimate the frame rate; a live upload would wait for them all.
            options["fpsprobesize"] = "0"
        container = av.open(source, mode="r", options=options)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(
            f"could not read the bytes as a video container {described}: the file is not a video, "
            "or it is cut short (an MP4 whose index comes last is unreadable until the end arrives); "
            "send a complete MP4, MOV, WebM/Matroska or AVI file"
        ) from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError("the file has no video stream (audio only or metadata only)")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise VideoDecodeError(f"frames of {width}x{height} exceed the limit of {max_pixels} pixels; downscale")
        if stream.frames > max_frames:
            raise VideoDecodeError(f"the video has {stream.frames} frames, more than the limit of {max_frames}")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if on_open is not None:
            on_open(StreamInfo(float(rate) if rate else 0.0, stream.codec_context.name, int(stream.frames or 0)))
        count, shape = 0, None
        try:
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:
                    raise VideoDecodeError(
                        f"frames of {frame.width}x{frame.height} exceed the limit of {max_pixels} pixels"
                    )
                if count == max_frames:
                    raise VideoDecodeError(f"the video has more than the limit of {max_frames} frames")
                if shape is not None and (frame.height, frame.width) != shape:
                    raise VideoDecodeError("the frame size changes mid-stream; re-encode at one size")
                shape = (frame.height, frame.width)
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError) as exc:
            raise VideoDecodeError(
                f"the video stream is corrupt or cut short after {count} frames; send the complete file"
            ) from exc
        if not count:
            raise VideoDecodeError("the video stream has no decodable frames")
        if stream.frames and count < stream.frames:
            raise VideoDecodeError(
                f"the video is cut short: {count} of {stream.frames} frames decoded; send the complete file"
            )


def decode_video(data: bytes, *, max_frames: int = 512, max_pixels: int = 4096 * 4096) -> DecodedVideo:
    """Decode the first video stream of `data` to RGB frames; VideoDecodeError if it is unusable."""
    if not data:
        raise VideoDecodeError("the video is empty (0 bytes); send the whole file, e.g. an H.264 MP4")
    info: list[StreamInfo] = []
    frames = list(
        iter_frames(
            io.BytesIO(data), size_hint=len(data), max_frames=max_frames, max_pixels=max_pixels, on_open=info.append
        )
    )
    return DecodedVideo(frames=np.stack(frames), fps=info[0].fps, codec=info[0].codec)
