"""One server interceptor for every RPC: API-key auth, tenant context, metrics and access logs."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kdcvg.auth import ApiKeys, is_public
from kdcvg.metrics import ServerMetrics

log = logging.getLogger("kdcvg.access")

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("kdcvg_tenant", default=None)

UNAUTHENTICATED_MESSAGE = (
    "missing or unknown API key: send metadata `authorization: Bearer <key>` (or `x-api-key: <key>`) "
    "with a key configured in KDCVG_API_KEYS or KDCVG_API_KEYS_FILE"
)


def current_tenant() -> str:
    """The tenant of the RPC being handled; set by the interceptor before any servicer code runs."""
    tenant = _tenant.get()
    if tenant is None:
        raise RuntimeError("no tenant in context: the RPC did not pass through the auth interceptor")
    return tenant


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys, metrics: ServerMetrics) -> None:
        self._keys = keys
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if is_public(method):
            return handler
        tenant = self._keys.tenant_of(handler_call_details.invocation_metadata)
        return self._wrap(handler, method, tenant)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, tenant: str | None) -> grpc.RpcMethodHandler:
        metrics = self._metrics
        short = method.rsplit("/", 2)[-2].split(".")[-1] + "/" + method.rsplit("/", 1)[-1]

        def finish(context: grpc.aio.ServicerContext, started: float, code: grpc.StatusCode | None = None) -> None:
            code = code or _code_of(context)
            elapsed = time.perf_counter() - started
            metrics.requests.labels(short, code.name).inc()
            metrics.latency.labels(short, code.name).observe(elapsed)
            metrics.in_flight.labels(short).dec()
            level = logging.INFO if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else logging.WARNING
            log.log(
                level,
                "rpc",
                extra={"method": short, "code": code.name, "ms": round(elapsed * 1000, 3), "tenant": tenant},
            )

        async def deny(context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

        def unary_response(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                metrics.in_flight.labels(short).inc()
                try:
                    if tenant is None:
                        await deny(context)
                    _tenant.set(tenant)
                    result = await behavior(request_or_iterator, context)
                except asyncio.CancelledError:
                    finish(context, started, grpc.StatusCode.CANCELLED)
                    raise
                except Exception:
                    finish(context, started, None if context.code() else grpc.StatusCode.INTERNAL)
                    raise
                finish(context, started)
                return result

            return wrapped

        def stream_response(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                metrics.in_flight.labels(short).inc()
                try:
                    if tenant is None:
                        await deny(context)
                    _tenant.set(tenant)
                    async for response in behavior(request_or_iterator, context):
                        yield response
                except (asyncio.CancelledError, GeneratorExit):
                    finish(context, started, grpc.StatusCode.CANCELLED)
                    raise
                except Exception:
                    finish(context, started, None if context.code() else grpc.StatusCode.INTERNAL)
                    raise
                finish(context, started)

            return wrapped

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )
