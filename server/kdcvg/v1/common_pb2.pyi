from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    CATEGORY_FOOD_BEVERAGES: _ClassVar[Category]
    CATEGORY_FASHION_LUXURY: _ClassVar[Category]
    CATEGORY_HOME_APPLIANCES: _ClassVar[Category]
    CATEGORY_LIFESTYLE_LEISURE: _ClassVar[Category]
    CATEGORY_ELECTRONICS_MOBILITY: _ClassVar[Category]
    CATEGORY_BEAUTY_HEALTH: _ClassVar[Category]
CATEGORY_UNSPECIFIED: Category
CATEGORY_FOOD_BEVERAGES: Category
CATEGORY_FASHION_LUXURY: Category
CATEGORY_HOME_APPLIANCES: Category
CATEGORY_LIFESTYLE_LEISURE: Category
CATEGORY_ELECTRONICS_MOBILITY: Category
CATEGORY_BEAUTY_HEALTH: Category

class SemanticUnit(_message.Message):
    __slots__ = ("motion", "actor", "recipient", "core", "nominal")
    MOTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CORE_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_FIELD_NUMBER: _ClassVar[int]
    motion: str
    actor: str
    recipient: str
    core: bool
    nominal: bool
    def __init__(self, motion: _Optional[str] = ..., actor: _Optional[str] = ..., recipient: _Optional[str] = ..., core: _Optional[bool] = ..., nominal: _Optional[bool] = ...) -> None: ...

class ScoreParts(_message.Message):
    __slots__ = ("total_similarity", "motion_similarity", "actor_similarity", "recipient_similarity", "unit_similarity", "unit_score", "score", "passed_total_threshold", "passed_motion_threshold", "passed_actor_threshold")
    TOTAL_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MOTION_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PASSED_TOTAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_MOTION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_ACTOR_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    total_similarity: float
    motion_similarity: float
    actor_similarity: float
    recipient_similarity: float
    unit_similarity: float
    unit_score: float
    score: float
    passed_total_threshold: bool
    passed_motion_threshold: bool
    passed_actor_threshold: bool
    def __init__(self, total_similarity: _Optional[float] = ..., motion_similarity: _Optional[float] = ..., actor_similarity: _Optional[float] = ..., recipient_similarity: _Optional[float] = ..., unit_similarity: _Optional[float] = ..., unit_score: _Optional[float] = ..., score: _Optional[float] = ..., passed_total_threshold: _Optional[bool] = ..., passed_motion_threshold: _Optional[bool] = ..., passed_actor_threshold: _Optional[bool] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "tenant", "category", "caption", "selling_points", "motion", "product", "labels", "frame_count", "width", "height", "fps", "keyframe_indices", "units", "video_bytes", "created_unix_ms", "has_prior")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SELLING_POINTS_FIELD_NUMBER: _ClassVar[int]
    MOTION_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_INDICES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HAS_PRIOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    category: Category
    caption: str
    selling_points: _containers.RepeatedScalarFieldContainer[str]
    motion: str
    product: str
    labels: _containers.ScalarMap[str, str]
    frame_count: int
    width: int
    height: int
    fps: float
    keyframe_indices: _containers.RepeatedScalarFieldContainer[int]
    units: _containers.RepeatedCompositeFieldContainer[SemanticUnit]
    video_bytes: int
    created_unix_ms: int
    has_prior: bool
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., category: _Optional[_Union[Category, str]] = ..., caption: _Optional[str] = ..., selling_points: _Optional[_Iterable[str]] = ..., motion: _Optional[str] = ..., product: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., frame_count: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., keyframe_indices: _Optional[_Iterable[int]] = ..., units: _Optional[_Iterable[_Union[SemanticUnit, _Mapping]]] = ..., video_bytes: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., has_prior: _Optional[bool] = ...) -> None: ...
