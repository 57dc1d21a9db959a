from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreOptions(_message.Message):
    __slots__ = ("metrics", "prompt", "product_image", "fps")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    prompt: str
    product_image: bytes
    fps: float
    def __init__(self, metrics: _Optional[_Iterable[str]] = ..., prompt: _Optional[str] = ..., product_image: _Optional[bytes] = ..., fps: _Optional[float] = ...) -> None: ...

class RawFrame(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class ScoreStreamRequest(_message.Message):
    __slots__ = ("options", "frame", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: ScoreOptions
    frame: RawFrame
    chunk: bytes
    def __init__(self, options: _Optional[_Union[ScoreOptions, _Mapping]] = ..., frame: _Optional[_Union[RawFrame, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class MetricScore(_message.Message):
    __slots__ = ("name", "value", "components", "frames")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    components: _containers.ScalarMap[str, float]
    frames: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ..., frames: _Optional[int] = ...) -> None: ...

class MetricUnavailable(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ScoreSummary(_message.Message):
    __slots__ = ("metrics", "unavailable", "frames")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricScore]
    unavailable: _containers.RepeatedCompositeFieldContainer[MetricUnavailable]
    frames: int
    def __init__(self, metrics: _Optional[_Iterable[_Union[MetricScore, _Mapping]]] = ..., unavailable: _Optional[_Iterable[_Union[MetricUnavailable, _Mapping]]] = ..., frames: _Optional[int] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("partial", "summary")
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    partial: MetricScore
    summary: ScoreSummary
    def __init__(self, partial: _Optional[_Union[MetricScore, _Mapping]] = ..., summary: _Optional[_Union[ScoreSummary, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("options", "video")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    options: ScoreOptions
    video: bytes
    def __init__(self, options: _Optional[_Union[ScoreOptions, _Mapping]] = ..., video: _Optional[bytes] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("summary",)
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    summary: ScoreSummary
    def __init__(self, summary: _Optional[_Union[ScoreSummary, _Mapping]] = ...) -> None: ...
