"""H.264 MP4 encoding and bounded, validated decoding of uploaded videos, all in memory (PyAV)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

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


def decode_video(data: bytes, *, max_frames: int = 512, max_pixels: int = 4096 * 4096) -> DecodedVideo:
    """Decode the first video stream of `data` to RGB frames; VideoDecodeError if it is unusable."""
    if not data:
        raise VideoDecodeError("the video is empty (0 bytes); send the whole file, e.g. an H.264 MP4")
    try:
        container = av.open(io.BytesIO(data), mode="r", options={"format_whitelist": CONTAINERS})
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(
            f"could not read the bytes as a video container ({len(data)} bytes): the file is not a video, "
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
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:
                    raise VideoDecodeError(
                        f"frames of {frame.width}x{frame.height} exceed the limit of {max_pixels} pixels"
                    )
                if len(frames) == max_frames:
                    raise VideoDecodeError(f"the video has more than the limit of {max_frames} frames")
                if frames and (frame.height, frame.width) != frames[0].shape[:2]:
                    raise VideoDecodeError("the frame size changes mid-stream; re-encode at one size")
                frames.append(frame.to_ndarray(format="rgb24"))
        except (av.FFmpegError, OSError) as exc:
            raise VideoDecodeError(
                f"the video stream is corrupt or cut short after {len(frames)} frames; send the complete file"
            ) from exc
        if not frames:
            raise VideoDecodeError("the video stream has no decodable frames")
        if stream.frames and len(frames) < stream.frames:
            raise VideoDecodeError(
                f"the video is cut short: {len(frames)} of {stream.frames} frames decoded; send the complete file"
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return DecodedVideo(
            frames=np.stack(frames),
            fps=float(rate) if rate else 0.0,
            codec=stream.codec_context.name,
        )
