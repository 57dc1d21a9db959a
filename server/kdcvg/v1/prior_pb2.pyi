from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PriorTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIOR_TIER_UNSPECIFIED: _ClassVar[PriorTier]
    PRIOR_TIER_DISK: _ClassVar[PriorTier]
    PRIOR_TIER_HOST: _ClassVar[PriorTier]
    PRIOR_TIER_DEVICE: _ClassVar[PriorTier]
PRIOR_TIER_UNSPECIFIED: PriorTier
PRIOR_TIER_DISK: PriorTier
PRIOR_TIER_HOST: PriorTier
PRIOR_TIER_DEVICE: PriorTier

class Prior(_message.Message):
    __slots__ = ("id", "rank", "tier", "size_bytes", "final_loss")
    ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    id: str
    rank: int
    tier: PriorTier
    size_bytes: int
    final_loss: float
    def __init__(self, id: _Optional[str] = ..., rank: _Optional[int] = ..., tier: _Optional[_Union[PriorTier, str]] = ..., size_bytes: _Optional[int] = ..., final_loss: _Optional[float] = ...) -> None: ...

class ListPriorsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPriorsResponse(_message.Message):
    __slots__ = ("priors", "next_page_token")
    PRIORS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    priors: _containers.RepeatedCompositeFieldContainer[Prior]
    next_page_token: str
    def __init__(self, priors: _Optional[_Iterable[_Union[Prior, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LoadPriorRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class LoadPriorResponse(_message.Message):
    __slots__ = ("prior", "loaded_from", "load_millis")
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    LOADED_FROM_FIELD_NUMBER: _ClassVar[int]
    LOAD_MILLIS_FIELD_NUMBER: _ClassVar[int]
    prior: Prior
    loaded_from: PriorTier
    load_millis: float
    def __init__(self, prior: _Optional[_Union[Prior, _Mapping]] = ..., loaded_from: _Optional[_Union[PriorTier, str]] = ..., load_millis: _Optional[float] = ...) -> None: ...

class UnloadPriorRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UnloadPriorResponse(_message.Message):
    __slots__ = ("prior",)
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    prior: Prior
    def __init__(self, prior: _Optional[_Union[Prior, _Mapping]] = ...) -> None: ...

class DistillPriorRequest(_message.Message):
    __slots__ = ("entry_id", "rank", "steps", "learning_rate", "seed")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    rank: int
    steps: int
    learning_rate: float
    seed: int
    def __init__(self, entry_id: _Optional[str] = ..., rank: _Optional[int] = ..., steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class DistillPriorResponse(_message.Message):
    __slots__ = ("step", "total_steps", "loss", "prior")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    loss: float
    prior: Prior
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., prior: _Optional[_Union[Prior, _Mapping]] = ...) -> None: ...
