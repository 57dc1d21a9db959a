"""Request building shared by the sync and asyncio clients: enum names, options, validation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from kdcvg.v1 import common_pb2, generation_pb2, knowledge_pb2, prior_pb2, scoring_pb2

CategoryLike = str | int
RankingLike = str | int
OptionsLike = Mapping[str, Any] | generation_pb2.GenerateOptions
ImageLike = bytes | Path


def _short_names(enum: EnumTypeWrapper, prefix: str) -> list[str]:
    return [name.removeprefix(prefix).lower() for name in enum.keys() if not name.endswith("_UNSPECIFIED")]


def _enum_value(enum: EnumTypeWrapper, prefix: str, value: str | int, what: str) -> int:
    """Accepts the number, the full name ("CATEGORY_FOOD_BEVERAGES") or the short one ("food_beverages")."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a name or an enum number, not a bool")
    if isinstance(value, int):
        if value not in enum.values():
            raise ValueError(f"unknown {what} {value}; valid: {', '.join(_short_names(enum, prefix))}")
        return value
    name = value.strip().upper().replace("-", "_")
    full = name if name.startswith(prefix) else prefix + name
    if full in enum.keys() and not full.endswith("_UNSPECIFIED"):
        return int(enum.Value(full))
    raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(_short_names(enum, prefix))}")


CATEGORY_NAMES: tuple[str, ...] = tuple(_short_names(common_pb2.Category, "CATEGORY_"))
RANKING_NAMES: tuple[str, ...] = tuple(_short_names(knowledge_pb2.Ranking, "RANKING_"))
KNOWLEDGE_MODE_NAMES: tuple[str, ...] = tuple(_short_names(generation_pb2.KnowledgeMode, "KNOWLEDGE_MODE_"))


def parse_category(value: CategoryLike) -> int:
    """``Category`` from 1, "CATEGORY_FOOD_BEVERAGES" or "food_beverages"; ValueError if unknown."""
    return _enum_value(common_pb2.Category, "CATEGORY_", value, "category")


def parse_ranking(value: RankingLike) -> int:
    return _enum_value(knowledge_pb2.Ranking, "RANKING_", value, "ranking")


def parse_knowledge_mode(value: str | int) -> int:
    return _enum_value(generation_pb2.KnowledgeMode, "KNOWLEDGE_MODE_", value, "knowledge mode")


def _read_bytes(value: ImageLike | None) -> bytes:
    if value is None:
        return b""
    return value.read_bytes() if isinstance(value, Path) else bytes(value)


def generate_options(options: OptionsLike | None) -> generation_pb2.GenerateOptions:
    if options is None:
        return generation_pb2.GenerateOptions()
    if isinstance(options, generation_pb2.GenerateOptions):
        return options
    fields = dict(options)
    valid = [f.name for f in generation_pb2.GenerateOptions.DESCRIPTOR.fields]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"unknown generate option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if "knowledge_mode" in fields:
        fields["knowledge_mode"] = parse_knowledge_mode(fields["knowledge_mode"])
    return generation_pb2.GenerateOptions(**fields)


def ingest_metadata(
    *,
    category: CategoryLike,
    caption: str,
    selling_points: Sequence[str],
    motion: str,
    product: str,
    labels: Mapping[str, str] | None,
) -> knowledge_pb2.IngestMetadata:
    """Validated before the video is read; the caller fills in total_bytes and sha256."""
    return knowledge_pb2.IngestMetadata(
        category=parse_category(category),
        caption=caption,
        selling_points=_points(selling_points),
        motion=motion,
        product=product,
        labels=dict(labels or {}),
    )


def _points(selling_points: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; sending it letter by letter is never what was meant.
    if isinstance(selling_points, str):
        return [selling_points]
    return list(selling_points)


def search_request(
    selling_points: Sequence[str],
    *,
    product: str,
    category: CategoryLike | None,
    limit: int,
    ranking: RankingLike,
) -> knowledge_pb2.SearchRequest:
    return knowledge_pb2.SearchRequest(
        selling_points=_points(selling_points),
        product=product,
        category=0 if category is None else parse_category(category),
        limit=limit,
        ranking=parse_ranking(ranking),
    )


def list_entries_request(
    page_size: int, page_token: str, category: CategoryLike | None
) -> knowledge_pb2.ListEntriesRequest:
    if page_size < 0:
        raise ValueError(f"page_size must be 0 (the server's default) or positive, got {page_size}")
    return knowledge_pb2.ListEntriesRequest(
        page_size=page_size,
        page_token=page_token,
        category=0 if category is None else parse_category(category),
    )


def feedback_request(retrieval_id: str, entry_id: str, reward: float, note: str) -> knowledge_pb2.FeedbackRequest:
    if not -1.0 <= reward <= 1.0:
        raise ValueError(f"reward must be in [-1, 1], got {reward}")
    return knowledge_pb2.FeedbackRequest(retrieval_id=retrieval_id, entry_id=entry_id, reward=reward, note=note)


def generate_request(
    product: str,
    selling_points: Sequence[str],
    *,
    category: CategoryLike,
    options: OptionsLike | None,
    product_image: ImageLike | None,
    reference_id: str = "",
) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        product=product,
        category=parse_category(category),
        selling_points=_points(selling_points),
        product_image=_read_bytes(product_image),
        options=generate_options(options),
        reference_id=reference_id,
    )


def score_request(
    video: bytes | Path,
    *,
    metrics: Sequence[str],
    prompt: str,
    product_image: ImageLike | None,
    fps: float,
) -> scoring_pb2.ScoreRequest:
    return scoring_pb2.ScoreRequest(
        options=score_options(metrics=metrics, prompt=prompt, product_image=product_image, fps=fps),
        video=_read_bytes(video),
    )


STREAM_CHUNK_BYTES = 256 << 10


def score_options(
    *, metrics: Sequence[str], prompt: str, product_image: ImageLike | None, fps: float
) -> scoring_pb2.ScoreOptions:
    return scoring_pb2.ScoreOptions(
        metrics=list(metrics), prompt=prompt, product_image=_read_bytes(product_image), fps=fps
    )


def check_frame(frame: Any) -> tuple[int, ...]:
    shape = getattr(frame, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or str(getattr(frame, "dtype", "")) != "uint8":
        raise ValueError(f"each frame must be an RGB uint8 array of shape (H, W, 3), got {shape}")
    return tuple(shape)


def score_stream_requests(
    frames: Iterable[Any] | bytes | Path,
    *,
    metrics: Sequence[str] = (),
    prompt: str = "",
    product_image: ImageLike | None = None,
    fps: float = 0.0,
) -> Iterator[scoring_pb2.ScoreStreamRequest]:
    """The ScoreStream request messages: options, then one RawFrame per frame (RGB uint8 arrays of shape
    (H, W, 3), e.g. numpy), or the chunks of an encoded video file when ``frames`` is bytes or a path.

    A sequence (a list, a (T, H, W, 3) array) is checked here, before anything is sent; frames from an
    iterator are checked as they are sent, where a bad one can only end the call."""
    if not isinstance(frames, bytes | Path) and (isinstance(frames, Sequence) or hasattr(frames, "shape")):
        for frame in frames:
            check_frame(frame)
    first = scoring_pb2.ScoreStreamRequest(
        options=score_options(metrics=metrics, prompt=prompt, product_image=product_image, fps=fps)
    )
    return _score_stream_messages(first, frames)


def _score_stream_messages(
    first: scoring_pb2.ScoreStreamRequest, frames: Any
) -> Iterator[scoring_pb2.ScoreStreamRequest]:
    yield first
    if isinstance(frames, bytes | Path):
        data = frames if isinstance(frames, bytes) else frames.read_bytes()
        for offset in range(0, len(data), STREAM_CHUNK_BYTES):
            yield scoring_pb2.ScoreStreamRequest(chunk=data[offset : offset + STREAM_CHUNK_BYTES])
        return
    for frame in frames:
        shape = check_frame(frame)
        yield scoring_pb2.ScoreStreamRequest(
            frame=scoring_pb2.RawFrame(width=int(shape[1]), height=int(shape[0]), rgb=frame.tobytes())
        )


def distill_request(
    entry_id: str, *, rank: int, steps: int, learning_rate: float, seed: int
) -> prior_pb2.DistillPriorRequest:
    return prior_pb2.DistillPriorRequest(
        entry_id=entry_id, rank=rank, steps=steps, learning_rate=learning_rate, seed=seed
    )
