"""Collects a Generate stream into one ``GeneratedVideo``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kdcvg.v1 import generation_pb2, scoring_pb2

from .errors import DataLoss

GENERATE_METHOD = "/kdcvg.v1.GenerationService/Generate"


@dataclass
class GeneratedVideo:
    """The result of a whole Generate stream."""

    mp4: bytes
    summary: generation_pb2.GenerateSummary
    references: list[generation_pb2.ReferencesChosen] = field(default_factory=list)
    scores: scoring_pb2.ScoreSummary | None = None
    mime_type: str = "video/mp4"

    @property
    def retrieval_id(self) -> str:
        """The retrieval to quote in ``feedback``; empty when knowledge mode was off."""
        return self.references[0].retrieval_id if self.references else ""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.mp4)
        return path


class VideoAssembler:
    """Feeds on Generate events; ``result()`` checks the video against the summary."""

    def __init__(self) -> None:
        self._chunks = bytearray()
        self._references: list[generation_pb2.ReferencesChosen] = []
        self._scores: scoring_pb2.ScoreSummary | None = None
        self._summary: generation_pb2.GenerateSummary | None = None
        self._mime_type = "video/mp4"

    def add(self, event: generation_pb2.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "references":
            self._references.append(event.references)
        elif kind == "video":
            if event.video.offset != len(self._chunks):
                raise DataLoss(
                    f"video chunk at offset {event.video.offset}, expected {len(self._chunks)}",
                    method=GENERATE_METHOD,
                )
            self._chunks += event.video.data
            self._mime_type = event.video.mime_type or self._mime_type
        elif kind == "scores":
            self._scores = event.scores
        elif kind == "summary":
            self._summary = event.summary

    def result(self) -> GeneratedVideo:
        if self._summary is None:
            raise DataLoss("the stream ended without a summary", method=GENERATE_METHOD)
        mp4 = bytes(self._chunks)
        summary = self._summary
        if summary.video_bytes and summary.video_bytes != len(mp4):
            raise DataLoss(f"got {len(mp4)} video bytes, summary says {summary.video_bytes}", method=GENERATE_METHOD)
        if summary.sha256 and summary.sha256 != hashlib.sha256(mp4).hexdigest():
            raise DataLoss("the video's sha256 does not match the summary", method=GENERATE_METHOD)
        return GeneratedVideo(
            mp4=mp4,
            summary=summary,
            references=self._references,
            scores=self._scores,
            mime_type=self._mime_type,
        )
