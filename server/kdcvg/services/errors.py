"""Maps domain errors to gRPC status codes, once, for every servicer method."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from kdcvg.errors import FailedPrecondition, InvalidInput, KdcvgError, NotFound, NotReady, Overloaded, TooLarge

log = logging.getLogger("kdcvg.errors")

STATUS_OF: dict[type[KdcvgError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(exc: KdcvgError) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Aborts the call with the status of a domain error; an unexpected error is INTERNAL and logged."""

    async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, KdcvgError):
            await context.abort(status_of(exc), str(exc))
        log.exception("unexpected error in %s", method.__qualname__)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server logs")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await abort(context, exc)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)

    return unary
