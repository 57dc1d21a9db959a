"""Errors raised by the clients: one class per gRPC status code, under ``KdcvgError``.

Every error carries the status ``code``, the server's ``message`` (the status details), the ``method``
it came from ("/kdcvg.v1.KnowledgeService/Search") and how many ``attempts`` were made.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from ._retry import lost_stream_status

Metadata = tuple[tuple[str, str | bytes], ...]


class KdcvgError(Exception):
    """Base of every error the SDK raises for a failed call."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        code: grpc.StatusCode | None = None,
        trailing_metadata: Metadata = (),
        attempts: int = 1,
    ) -> None:
        self.code: grpc.StatusCode = code or self.default_code
        self.message = message
        self.method = method
        self.trailing_metadata = trailing_metadata
        self.attempts = attempts
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" from {self.method}" if self.method else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self.code.name}{where}{tries}: {self.message}"


class Cancelled(KdcvgError):
    default_code = grpc.StatusCode.CANCELLED


class UnknownError(KdcvgError):
    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(KdcvgError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(KdcvgError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(KdcvgError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KdcvgError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(KdcvgError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(KdcvgError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(KdcvgError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(KdcvgError):
    default_code = grpc.StatusCode.ABORTED


class OutOfRange(KdcvgError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(KdcvgError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(KdcvgError):
    default_code = grpc.StatusCode.INTERNAL


class Unavailable(KdcvgError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(KdcvgError):
    """Also raised client-side when a streamed video does not match its announced size or sha256."""

    default_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(KdcvgError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[KdcvgError]] = {
    cls.default_code: cls
    for cls in (
        Cancelled,
        UnknownError,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(code: grpc.StatusCode) -> type[KdcvgError]:
    return _BY_CODE.get(code, KdcvgError)


def _metadata(raw: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    return tuple((key, value) for key, value in raw or ())


def from_rpc_error(error: grpc.RpcError, method: str, *, attempts: int = 1) -> KdcvgError:
    """The ``KdcvgError`` for a failed sync or asyncio call."""
    # grpc.RpcError itself has no accessors; the errors the channels raise are also grpc.Call objects.
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details: str = (error.details() if hasattr(error, "details") else None) or str(error)
    if lost_stream_status(error):
        details = (
            "the server ended the request stream before the client had sent all of it, and grpc-aio lost "
            "the server's status (grpc/grpc#36066); the sync client, or a retry, reports the server's reason"
        )
    trailing = _metadata(error.trailing_metadata() if hasattr(error, "trailing_metadata") else None)
    return error_class(code)(details, method=method, code=code, trailing_metadata=trailing, attempts=attempts)
