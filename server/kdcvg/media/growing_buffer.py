"""A file that is still being written: reads block until its bytes arrive, so a decoder can run on an upload.

One thread `feed`s chunks as they come off the network and `finish`es; another reads it like a file (PyAV
here). Reading past what has arrived waits. A demuxer that can seek scans ahead (the MP4 demuxer reads every
fragment while opening), so for decoding on the fly the buffer presents itself as unseekable
(`streaming`); `streamable` tells whether a file can be decoded that way at all. `abort` wakes the reader
with an error, for a cancelled or failed upload.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable


class UploadAborted(OSError):
    """The upload stopped before the file was complete."""


class GrowingBuffer(io.RawIOBase):
    def __init__(self) -> None:
        super().__init__()
        self.streaming = True  # read in order only: seekable() is False, so demuxers never wait for the end
        self._data = bytearray()
        self._pos = 0
        self._finished = False
        self._aborted = False
        self._cond = threading.Condition()

    # --- writer side ----------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        with self._cond:
            self._data += chunk
            self._cond.notify_all()

    def finish(self) -> None:
        """No more bytes will come: reads past the end now return EOF."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def abort(self) -> None:
        """The upload failed or was cancelled: a waiting or later read raises UploadAborted."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    @property
    def size(self) -> int:
        return len(self._data)

    # --- reader side ----------------------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not (ready() or self._finished or self._aborted):
            self._cond.wait()
        if self._aborted:
            raise UploadAborted("the upload was abandoned before the file was complete")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return not self.streaming

    def peek(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset, waiting until they have arrived (fewer only at the end of the file)."""
        with self._cond:
            self._wait(lambda: len(self._data) >= offset + n)
            return bytes(self._data[offset : offset + n])

    def whole(self) -> bytes:
        """The complete file, once the upload has finished."""
        with self._cond:
            self._wait(lambda: False)
            return bytes(self._data)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        with self._cond:
            self._wait(lambda: len(self._data) > self._pos)
            n = max(0, min(len(buffer), len(self._data) - self._pos))
            buffer[:n] = self._data[self._pos : self._pos + n]
            self._pos += n
            return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._cond:
            if whence == io.SEEK_END:
                self._wait(lambda: False)  # the end is known once the upload has finished
                self._pos = len(self._data) + offset
            elif whence == io.SEEK_CUR:
                self._pos += offset
            else:
                self._pos = offset
            if self._pos < 0:
                raise ValueError("negative seek position")
            return self._pos

    def tell(self) -> int:
        return self._pos


MP4_SKIPPABLE = {b"ftyp", b"free", b"skip", b"wide", b"uuid", b"styp", b"sidx", b"pdin"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM


def streamable(buffer: GrowingBuffer, max_boxes: int = 16) -> bool:
    """Whether the upload can be decoded in order as it arrives: Matroska/WebM, or an MP4/MOV whose index
    (`moov`) comes before its media data (fast-start or fragmented). Waits only for the bytes it needs."""
    head = buffer.peek(0, 8)
    if head[:4] == EBML_MAGIC:
        return True
    offset = 0
    for _ in range(max_boxes):
        box = buffer.peek(offset, 16)
        if len(box) < 8:
            return False
        size, kind = int.from_bytes(box[:4], "big"), box[4:8]
        if kind == b"moov":
            return True
        if kind not in MP4_SKIPPABLE:
            return False  # mdat first (index at the end), or not an MP4 at all
        if size == 1 and len(box) >= 16:
            size = int.from_bytes(box[8:16], "big")
        if size < 8:
            return False
        offset += size
    return False
