"""The upload buffer a decoder reads while chunks still arrive, and the test of which files stream."""

from __future__ import annotations

import io
import threading
import time

import pytest
from test_scoring_service import clip, fragmented_mp4

from kdcvg.media.growing_buffer import GrowingBuffer, UploadAborted, streamable
from kdcvg.media.video import encode_mp4, iter_frames


def test_reads_wait_for_bytes_and_end_at_finish() -> None:
    buf = GrowingBuffer()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: buf.read(4), b"")))
    reader.start()
    buf.feed(b"abc")
    time.sleep(0.05)
    assert reader.is_alive()  # waiting for more
    buf.feed(b"defgh")
    buf.finish()
    reader.join(2)
    assert b"".join(got) == b"abcdefgh"
    assert buf.seek(-2, io.SEEK_END) == 6 and buf.read(2) == b"gh"


def test_abort_wakes_a_waiting_reader() -> None:
    buf = GrowingBuffer()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            buf.read(10)
        except UploadAborted as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    buf.abort()
    reader.join(2)
    assert not reader.is_alive() and len(errors) == 1


def filled(data: bytes) -> GrowingBuffer:
    buf = GrowingBuffer()
    buf.feed(data)
    buf.finish()
    return buf


def test_which_uploads_stream() -> None:
    frames = clip(4)
    assert streamable(filled(fragmented_mp4(frames)))  # index first, fragments after
    assert not streamable(filled(encode_mp4(frames)))  # a plain MP4 keeps its index at the end
    assert streamable(filled(b"\x1a\x45\xdf\xa3" + b"\0" * 60))  # Matroska / WebM
    assert not streamable(filled(b"this is not a video at all"))
    assert not streamable(filled(b""))


def test_a_fragmented_upload_decodes_frames_before_it_is_complete() -> None:
    frames = clip(4)
    data = fragmented_mp4(frames)
    buf = GrowingBuffer()
    out: list = []
    decoder = threading.Thread(target=lambda: out.extend(iter_frames(buf)))
    decoder.start()
    buf.feed(data[: len(data) * 3 // 4])
    for _ in range(100):
        if out:
            break
        time.sleep(0.02)
    assert 0 < len(out) < len(frames)
    buf.feed(data[len(data) * 3 // 4 :])
    buf.finish()
    decoder.join(5)
    assert len(out) == len(frames)


@pytest.mark.parametrize("size", [0, 7])
def test_short_boxes_are_not_streamable(size: int) -> None:
    assert not streamable(filled(size.to_bytes(4, "big") + b"ftyp" + b"\0" * 8))
