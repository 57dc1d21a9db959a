from kdcvg.v1 import common_pb2 as _common_pb2
from kdcvg.v1 import scoring_pb2 as _scoring_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KnowledgeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KNOWLEDGE_MODE_UNSPECIFIED: _ClassVar[KnowledgeMode]
    KNOWLEDGE_MODE_OFF: _ClassVar[KnowledgeMode]
    KNOWLEDGE_MODE_SEMANTIC: _ClassVar[KnowledgeMode]
    KNOWLEDGE_MODE_FULL: _ClassVar[KnowledgeMode]
KNOWLEDGE_MODE_UNSPECIFIED: KnowledgeMode
KNOWLEDGE_MODE_OFF: KnowledgeMode
KNOWLEDGE_MODE_SEMANTIC: KnowledgeMode
KNOWLEDGE_MODE_FULL: KnowledgeMode

class GenerateOptions(_message.Message):
    __slots__ = ("frames", "width", "height", "steps", "guidance", "seed", "knowledge_mode", "fps", "prior_scale", "score")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_MODE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    PRIOR_SCALE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    frames: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    knowledge_mode: KnowledgeMode
    fps: int
    prior_scale: float
    score: bool
    def __init__(self, frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., knowledge_mode: _Optional[_Union[KnowledgeMode, str]] = ..., fps: _Optional[int] = ..., prior_scale: _Optional[float] = ..., score: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("product", "category", "selling_points", "product_image", "options", "reference_id")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SELLING_POINTS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    product: str
    category: _common_pb2.Category
    selling_points: _containers.RepeatedScalarFieldContainer[str]
    product_image: bytes
    options: GenerateOptions
    reference_id: str
    def __init__(self, product: _Optional[str] = ..., category: _Optional[_Union[_common_pb2.Category, str]] = ..., selling_points: _Optional[_Iterable[str]] = ..., product_image: _Optional[bytes] = ..., options: _Optional[_Union[GenerateOptions, _Mapping]] = ..., reference_id: _Optional[str] = ...) -> None: ...

class ReferencesChosen(_message.Message):
    __slots__ = ("retrieval_id", "entry_id", "caption", "score", "prior_id")
    RETRIEVAL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_ID_FIELD_NUMBER: _ClassVar[int]
    retrieval_id: str
    entry_id: str
    caption: str
    score: _common_pb2.ScoreParts
    prior_id: str
    def __init__(self, retrieval_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., caption: _Optional[str] = ..., score: _Optional[_Union[_common_pb2.ScoreParts, _Mapping]] = ..., prior_id: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "stage")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    stage: str
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class VideoChunk(_message.Message):
    __slots__ = ("data", "offset", "last", "mime_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    last: bool
    mime_type: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., last: _Optional[bool] = ..., mime_type: _Optional[str] = ...) -> None: ...

class GenerateSummary(_message.Message):
    __slots__ = ("seed", "stage_millis", "frames", "width", "height", "video_bytes", "sha256")
    class StageMillisEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEED_FIELD_NUMBER: _ClassVar[int]
    STAGE_MILLIS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    seed: int
    stage_millis: _containers.ScalarMap[str, float]
    frames: int
    width: int
    height: int
    video_bytes: int
    sha256: str
    def __init__(self, seed: _Optional[int] = ..., stage_millis: _Optional[_Mapping[str, float]] = ..., frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., video_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("references", "progress", "video", "scores", "summary")
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    references: ReferencesChosen
    progress: Progress
    video: VideoChunk
    scores: _scoring_pb2.ScoreSummary
    summary: GenerateSummary
    def __init__(self, references: _Optional[_Union[ReferencesChosen, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., video: _Optional[_Union[VideoChunk, _Mapping]] = ..., scores: _Optional[_Union[_scoring_pb2.ScoreSummary, _Mapping]] = ..., summary: _Optional[_Union[GenerateSummary, _Mapping]] = ...) -> None: ...
