from kdcvg.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ranking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANKING_UNSPECIFIED: _ClassVar[Ranking]
    RANKING_SEARCH_T2V: _ClassVar[Ranking]
    RANKING_COSINE: _ClassVar[Ranking]
RANKING_UNSPECIFIED: Ranking
RANKING_SEARCH_T2V: Ranking
RANKING_COSINE: Ranking

class IngestMetadata(_message.Message):
    __slots__ = ("category", "caption", "selling_points", "motion", "product", "labels", "total_bytes", "sha256")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SELLING_POINTS_FIELD_NUMBER: _ClassVar[int]
    MOTION_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    category: _common_pb2.Category
    caption: str
    selling_points: _containers.RepeatedScalarFieldContainer[str]
    motion: str
    product: str
    labels: _containers.ScalarMap[str, str]
    total_bytes: int
    sha256: str
    def __init__(self, category: _Optional[_Union[_common_pb2.Category, str]] = ..., caption: _Optional[str] = ..., selling_points: _Optional[_Iterable[str]] = ..., motion: _Optional[str] = ..., product: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: IngestMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[IngestMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("entry", "already_existed")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.Entry
    already_existed: bool
    def __init__(self, entry: _Optional[_Union[_common_pb2.Entry, _Mapping]] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("selling_points", "product", "category", "limit", "ranking")
    SELLING_POINTS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    selling_points: _containers.RepeatedScalarFieldContainer[str]
    product: str
    category: _common_pb2.Category
    limit: int
    ranking: Ranking
    def __init__(self, selling_points: _Optional[_Iterable[str]] = ..., product: _Optional[str] = ..., category: _Optional[_Union[_common_pb2.Category, str]] = ..., limit: _Optional[int] = ..., ranking: _Optional[_Union[Ranking, str]] = ...) -> None: ...

class Reference(_message.Message):
    __slots__ = ("entry", "score", "rank")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.Entry
    score: _common_pb2.ScoreParts
    rank: int
    def __init__(self, entry: _Optional[_Union[_common_pb2.Entry, _Mapping]] = ..., score: _Optional[_Union[_common_pb2.ScoreParts, _Mapping]] = ..., rank: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("references", "query_units", "retrieval_id", "candidates", "stage_micros")
    class StageMicrosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    QUERY_UNITS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    STAGE_MICROS_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedCompositeFieldContainer[Reference]
    query_units: _containers.RepeatedCompositeFieldContainer[_common_pb2.SemanticUnit]
    retrieval_id: str
    candidates: int
    stage_micros: _containers.ScalarMap[str, int]
    def __init__(self, references: _Optional[_Iterable[_Union[Reference, _Mapping]]] = ..., query_units: _Optional[_Iterable[_Union[_common_pb2.SemanticUnit, _Mapping]]] = ..., retrieval_id: _Optional[str] = ..., candidates: _Optional[int] = ..., stage_micros: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.Entry
    def __init__(self, entry: _Optional[_Union[_common_pb2.Entry, _Mapping]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "category")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    category: _common_pb2.Category
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., category: _Optional[_Union[_common_pb2.Category, str]] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_common_pb2.Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("retrieval_id", "entry_id", "reward", "note")
    RETRIEVAL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    retrieval_id: str
    entry_id: str
    reward: float
    note: str
    def __init__(self, retrieval_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., reward: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...
