"""MP4 encode/decode round trip, decode errors a user can act on, and keyframe selection."""

from __future__ import annotations

import dataclasses
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from kdcvg.data import MOTIONS, make_creative, render, sample_spec
from kdcvg.media import (
    VideoDecodeError,
    decode_video,
    encode_mp4,
    motion_segment,
    product_boxes,
    select_keyframes,
)

SAMPLE = Path(__file__).resolve().parents[1] / "server" / "kdcvg" / "sample"


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return make_creative(4, motions=["slide_left"], overlay_prob=1.0).frames


@pytest.fixture(scope="module")
def mp4(clip) -> bytes:
    return encode_mp4(clip)


# --- encode / decode ---------------------------------------------------------------------------------


def test_round_trip_keeps_shape_rate_and_pixels(clip, mp4):
    assert mp4[4:8] == b"ftyp"
    video = decode_video(mp4)
    assert video.frames.shape == clip.shape and video.frames.dtype == np.uint8
    assert np.abs(video.frames.astype(int) - clip).mean() < 8
    assert video.fps == pytest.approx(8.0)
    assert video.codec == "h264"


def test_round_trip_non_square_and_other_rate():
    frames = render(sample_spec(8, size=(96, 160), frames=12))
    video = decode_video(encode_mp4(frames, fps=24))
    assert video.frames.shape == (12, 96, 160, 3)
    assert np.abs(video.frames.astype(int) - frames).mean() < 8
    assert video.fps == pytest.approx(24.0)


def test_encoding_is_repeatable(clip, mp4):
    assert encode_mp4(clip) == mp4


def test_encode_rejects_bad_input(clip):
    with pytest.raises(ValueError, match="even"):
        encode_mp4(clip[:, :63])
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(clip.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_mp4(clip[0])
    with pytest.raises(ValueError, match="shape"):
        encode_mp4(clip[:0])
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(clip, fps=0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"this is not a video at all " * 40, "not a video"),
        (bytes(range(256)) * 8, "not a video"),
    ],
)
def test_decode_rejects_non_videos(data, match):
    with pytest.raises(VideoDecodeError, match=match):
        decode_video(data)


def test_decode_rejects_a_still_image_and_audio_only(clip):
    ok, png = cv2.imencode(".png", clip[0])
    assert ok
    with pytest.raises(VideoDecodeError, match="not a video"):
        decode_video(png.tobytes())
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 8000, i * 1024
            container.mux(stream.encode(samples))
        container.mux(stream.encode(None))
    with pytest.raises(VideoDecodeError, match="no video stream"):
        decode_video(buf.getvalue())


def test_decode_rejects_truncated_mp4(mp4):
    # The index (moov) of an MP4 written in one pass comes last, so half a file has none.
    with pytest.raises(VideoDecodeError, match="cut short"):
        decode_video(mp4[: len(mp4) // 2])


def test_decode_rejects_truncated_faststart_mp4(clip, tmp_path):
    # With the index first the container opens, and the cut shows up while decoding.
    path = tmp_path / "fast.mp4"
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for rgb in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert decode_video(data).frames.shape == clip.shape
    with pytest.raises(VideoDecodeError, match="cut short"):
        decode_video(data[: len(data) // 2])


def test_decode_enforces_limits(mp4):
    with pytest.raises(VideoDecodeError, match="more than the limit of 8"):
        decode_video(mp4, max_frames=8)
    with pytest.raises(VideoDecodeError, match="pixels"):
        decode_video(mp4, max_pixels=32 * 32)
    assert decode_video(mp4, max_frames=16, max_pixels=64 * 64).frames.shape[0] == 16


def test_decode_error_is_a_value_error():
    assert issubclass(VideoDecodeError, ValueError)


def test_sample_knowledge_base():
    lines = [json.loads(line) for line in (SAMPLE / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 60
    keys = {"file", "seed", "category", "caption", "selling_points", "motion", "product"}
    assert all(keys <= set(line) for line in lines)
    assert len({line["category"] for line in lines}) == 6
    counts = {m: sum(line["motion"] == m for line in lines) for m in MOTIONS}
    assert min(counts.values()) >= 5
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 2 * 1024 * 1024
    first = lines[0]
    video = decode_video((SAMPLE / first["file"]).read_bytes())
    assert video.frames.shape == (16, 64, 64, 3)
    # The manifest's labels regenerate the clip it sits beside.
    again = make_creative(first["seed"], motions=[first["motion"]], categories=[first["category"]])
    assert again.caption == first["caption"] and again.selling_points == first["selling_points"]
    assert np.abs(video.frames.astype(int) - again.frames).mean() < 8


# --- keyframes ---------------------------------------------------------------------------------------


def assert_valid(indices: list[int], n: int, k: int) -> None:
    assert indices == sorted(set(indices))
    assert all(isinstance(i, int) and 0 <= i < n for i in indices)
    assert len(indices) == min(n, k)


@pytest.mark.parametrize("motion", MOTIONS)
def test_keyframes_are_sorted_unique_in_range(motion):
    frames = make_creative(21, motions=[motion], overlay_prob=0.5).frames
    for k in (1, 4, 8, 16, 20):
        assert_valid(select_keyframes(frames, k), len(frames), k)
    first, last = motion_segment(frames)
    picked = select_keyframes(frames, 4)
    if last - first + 1 >= 4:
        assert picked[0] == first and picked[-1] == last


def test_short_clip_returns_every_frame():
    frames = make_creative(3, frames=8).frames
    assert select_keyframes(frames, 8) == list(range(8))
    assert select_keyframes(frames[:5], 8) == list(range(5))


@pytest.mark.parametrize("through_mp4", [False, True])
def test_keyframes_lie_in_the_moving_half(through_mp4):
    # Static for the first half (the product holds still), then it slides: keyframes must come from the slide.
    spec = sample_spec(6, motions=["slide_right"], frames=8, overlay_prob=1.0)
    moving = render(spec)
    frames = np.concatenate([np.repeat(moving[:1], 8, axis=0), moving])
    if through_mp4:
        frames = decode_video(encode_mp4(frames)).frames
    assert motion_segment(frames) == (8, 15)
    picked = select_keyframes(frames, 6)
    assert_valid(picked, 16, 6)
    assert picked[0] == 8 and picked[-1] == 15


def test_keyframes_widen_a_short_burst():
    spec = sample_spec(6, motions=["slide_right"], frames=8, overlay_prob=0.0)
    moving = render(spec)
    frames = np.concatenate([np.repeat(moving[:1], 12, axis=0), moving[:3], np.repeat(moving[2:3], 9, axis=0)])
    first, last = motion_segment(frames)
    assert (first, last) == (12, 14)  # frame 12 is the last still one, 13 and 14 moved
    picked = select_keyframes(frames, 8)
    assert_valid(picked, len(frames), 8)
    assert picked[0] <= first and last <= picked[-1] and picked[-1] - picked[0] == 7


def test_product_boxes_follow_the_product(clip):
    boxes = product_boxes(clip)
    assert boxes.shape == (16, 4)
    x0, y0, x1, y1 = boxes.T
    assert (x0 < x1).all() and (y0 < y1).all()
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 64).all()
    assert (np.diff(x0) <= 0).all() and x0[0] - x0[-1] > 25  # slide_left
    # The box should hug the product, not the steady text overlay or the whole frame.
    assert ((x1 - x0) * (y1 - y0)).max() < 0.4 * 64 * 64


def test_product_boxes_of_an_empty_clip_are_the_whole_frame():
    frames = np.full((4, 32, 48, 3), 200, np.uint8)
    assert (product_boxes(frames) == [0, 0, 48, 32]).all()
    assert select_keyframes(frames, 2) == [0, 3]


def test_keyframes_reject_bad_input(clip):
    with pytest.raises(ValueError):
        select_keyframes(clip.astype(np.float32))
    with pytest.raises(ValueError):
        select_keyframes(clip, 0)
    with pytest.raises(ValueError):
        product_boxes(clip[0])


def test_product_box_of_rotation_stays_centred():
    spec = dataclasses.replace(sample_spec(2, motions=["rotate"], overlay_prob=0.0), shape="bottle")
    boxes = product_boxes(render(spec))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.ptp(centres, axis=0).max() < 8
