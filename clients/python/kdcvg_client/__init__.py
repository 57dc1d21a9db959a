"""Python SDK for the kdcvg gRPC server: ``KdcvgClient`` (blocking) and ``AsyncKdcvgClient`` (asyncio).

Both clients have the same methods; unary calls return the response message, streaming calls return
an iterator (``ServerStream`` / ``AsyncServerStream``) that cancels the RPC when abandoned. Failed calls
raise a ``KdcvgError`` subclass named after the gRPC status (``NotFound``, ``Unavailable``, ...).
``generate_video`` and ``distill_prior_wait`` run their stream to the end and return the video or the
stored ``Prior``; ``iter_priors`` and ``iter_entries`` walk every page of ``list_priors`` and
``list_entries``.

The API key is sent as ``authorization: Bearer <key>``. Every call takes ``timeout`` (seconds); the
deadline covers every attempt and the backoff between them, and the whole of a stream.

Retries: exponential backoff with full jitter (``RetryPolicy``: 4 attempts, 0.05 s doubling to at
most 2 s), only where repeating the call cannot change its outcome, and never past the deadline. A
server's ``grpc-retry-pushback-ms`` trailer overrides the backoff (negative: do not retry).
RESOURCE_EXHAUSTED for a message over the size limit is never retried.

============================  ===============================  ===========================================
RPC                           retried on                       why
============================  ===============================  ===========================================
Ingest                        UNAVAILABLE, RESOURCE_EXHAUSTED  content-addressed; a retry re-sends the
                                                               whole stream from byte 0
Search, Get, ListEntries      UNAVAILABLE, RESOURCE_EXHAUSTED  read-only
Score                         UNAVAILABLE, RESOURCE_EXHAUSTED  pure function of the request
ListPriors, LoadPrior,        UNAVAILABLE, RESOURCE_EXHAUSTED  read-only, or sets a state the repeat
UnloadPrior                                                    sets again
health (Check)                UNAVAILABLE, RESOURCE_EXHAUSTED  read-only
Delete                        RESOURCE_EXHAUSTED only          after UNAVAILABLE the first attempt may
                                                               have deleted it, and a retry would say
                                                               NOT_FOUND; catch Unavailable and retry
                                                               yourself if NotFound means done to you
Feedback                      never                            a repeat records a second reward event
Generate, DistillPrior        never                            streams; costly, and events were seen
ScoreStream                   never                            the request iterator is consumed once
============================  ===============================  ===========================================
"""

from ._config import ClientConfig, RetryPolicy
from ._priors import prior_tier_name
from ._requests import CATEGORY_NAMES, KNOWLEDGE_MODE_NAMES, RANKING_NAMES, parse_category
from ._video import GeneratedVideo
from .aio import AsyncKdcvgClient, AsyncServerStream
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    KdcvgError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownError,
)
from .sync import KdcvgClient, ServerStream

__version__ = "0.1.0"

__all__ = [
    "CATEGORY_NAMES",
    "KNOWLEDGE_MODE_NAMES",
    "RANKING_NAMES",
    "Aborted",
    "AlreadyExists",
    "AsyncKdcvgClient",
    "AsyncServerStream",
    "Cancelled",
    "ClientConfig",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GeneratedVideo",
    "Internal",
    "InvalidArgument",
    "KdcvgClient",
    "KdcvgError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerStream",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "parse_category",
    "prior_tier_name",
]
