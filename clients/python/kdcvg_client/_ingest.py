"""The video of an Ingest call, readable from byte 0 once per attempt so a retry re-sends all of it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from kdcvg.v1 import knowledge_pb2

VideoLike = bytes | bytearray | memoryview | BinaryIO | Path

DEFAULT_CHUNK_SIZE = 256 * 1024
_HASH_BLOCK = 1024 * 1024


class VideoSource:
    """Random access to the video, whatever it came as.

    Reads go through one lock and an explicit offset because the request iterator of a failed attempt
    may still be running (gRPC drains it on its own thread) while the next attempt reads the same file.
    """

    def __init__(self, video: VideoLike) -> None:
        self._lock = threading.Lock()
        self._owned: BinaryIO | None = None
        self._data: bytes | None = None
        self._file: BinaryIO | None = None
        self._start = 0
        self._closed = False
        if isinstance(video, bytes | bytearray | memoryview):
            self._data = bytes(video)
        elif isinstance(video, Path):
            self._owned = self._file = video.open("rb")
        elif video.seekable():
            self._file = video
            self._start = video.tell()
        else:
            # A pipe or socket cannot be rewound for a retry, so it is kept in memory.
            self._data = video.read()
        self.size, self.sha256 = self._measure()

    @property
    def in_memory(self) -> bool:
        return self._data is not None

    def _measure(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        if self._data is not None:
            digest.update(self._data)
            return len(self._data), digest.hexdigest()
        size = 0
        while block := self.read_at(size, _HASH_BLOCK):
            digest.update(block)
            size += len(block)
        return size, digest.hexdigest()

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; empty at the end or once the source is closed."""
        if self._data is not None:
            return self._data[offset : offset + size]
        with self._lock:
            if self._closed or self._file is None:
                return b""
            self._file.seek(self._start + offset, io.SEEK_SET)
            return self._file.read(size)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._owned is not None:
                self._owned.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Attempt:
    """Tells a request iterator that its attempt is over, so a leftover one stops reading."""

    def __init__(self) -> None:
        self.active = True

    def end(self) -> None:
        self.active = False


def requests(
    metadata: knowledge_pb2.IngestMetadata, source: VideoSource, chunk_size: int, attempt: Attempt
) -> Iterator[knowledge_pb2.IngestRequest]:
    yield knowledge_pb2.IngestRequest(metadata=metadata)
    offset = 0
    while attempt.active and (chunk := source.read_at(offset, chunk_size)):
        yield knowledge_pb2.IngestRequest(chunk=chunk)
        offset += len(chunk)


async def async_requests(
    metadata: knowledge_pb2.IngestMetadata, source: VideoSource, chunk_size: int, attempt: Attempt
) -> AsyncIterator[knowledge_pb2.IngestRequest]:
    yield knowledge_pb2.IngestRequest(metadata=metadata)
    offset = 0
    while attempt.active:
        # File reads go off the event loop; in-memory slices are cheap enough to take inline.
        if source.in_memory:
            chunk = source.read_at(offset, chunk_size)
        else:
            chunk = await asyncio.to_thread(source.read_at, offset, chunk_size)
        if not chunk:
            return
        yield knowledge_pb2.IngestRequest(chunk=chunk)
        offset += len(chunk)


def check_chunk_size(chunk_size: int, max_send_message_bytes: int) -> None:
    # Leave room for the message framing around the chunk.
    if not 0 < chunk_size <= max_send_message_bytes - 1024:
        raise ValueError(f"chunk_size must be in 1..{max_send_message_bytes - 1024}, got {chunk_size}")
