"""Which RPCs are retried, on which codes, and how long to wait before the next attempt."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

import grpc

from ._config import RetryPolicy

Code = grpc.StatusCode

KNOWLEDGE = "/kdcvg.v1.KnowledgeService/"
GENERATION = "/kdcvg.v1.GenerationService/"
SCORING = "/kdcvg.v1.ScoringService/"
PRIOR = "/kdcvg.v1.PriorService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

_TRANSIENT = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED})

# Only calls whose repetition cannot change the outcome. Methods not listed are never retried.
RETRY_CODES: dict[str, frozenset[grpc.StatusCode]] = {
    KNOWLEDGE + "Ingest": _TRANSIENT,
    KNOWLEDGE + "Search": _TRANSIENT,
    KNOWLEDGE + "Get": _TRANSIENT,
    KNOWLEDGE + "ListEntries": _TRANSIENT,
    # UNAVAILABLE is ambiguous for Delete: the first attempt may have deleted the entry, and the retry
    # would then report NOT_FOUND for a delete that worked. RESOURCE_EXHAUSTED is a refusal, safe to retry.
    KNOWLEDGE + "Delete": frozenset({Code.RESOURCE_EXHAUSTED}),
    SCORING + "Score": _TRANSIENT,
    PRIOR + "ListPriors": _TRANSIENT,
    PRIOR + "LoadPrior": _TRANSIENT,
    PRIOR + "UnloadPrior": _TRANSIENT,
    HEALTH_CHECK: _TRANSIENT,
}

# gRFC A6: a server may tell the client when to retry, or (negative value) not to.
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def backoff(policy: RetryPolicy, retry_number: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based)."""
    ceiling = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (retry_number - 1))
    return rng.uniform(0.0, ceiling) if policy.jitter else ceiling


def _pushback(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The server's pushback in seconds, -1.0 for "do not retry", None when it sent none."""
    for key, value in trailing_metadata or ():
        if key == PUSHBACK_KEY:
            try:
                millis = int(value)
            except ValueError:
                return -1.0
            return millis / 1000 if millis >= 0 else -1.0
    return None


def _is_size_limit(error: grpc.RpcError) -> bool:
    # gRPC reports a message over the size limit as RESOURCE_EXHAUSTED; repeating it cannot help.
    details = error.details() if hasattr(error, "details") else ""
    return "message larger than max" in (details or "")


def lost_stream_status(error: grpc.RpcError) -> bool:
    """True for grpc-aio's INTERNAL "Internal error from Core" on a client stream that the server ended (with
    a status of its own) while the client was still writing: the failed write overwrites the server's
    status (grpc/grpc#36066). The server's answer is unknown, so it is treated as UNAVAILABLE."""
    if not hasattr(error, "code") or error.code() != Code.INTERNAL:
        return False
    debug = (error.debug_error_string() if hasattr(error, "debug_error_string") else "") or ""
    return "execute_batch" in debug and "SendMessageOperation" in debug


def retry_delay(
    policy: RetryPolicy,
    method: str,
    error: grpc.RpcError,
    attempt: int,
    deadline: float | None,
    rng: random.Random,
) -> float | None:
    """Seconds to sleep before attempt ``attempt + 1``, or None when the error must be raised."""
    code = error.code() if hasattr(error, "code") else None
    if lost_stream_status(error):
        code = Code.UNAVAILABLE
    if code not in RETRY_CODES.get(method, ()) or attempt >= policy.max_attempts:
        return None
    if code == Code.RESOURCE_EXHAUSTED and _is_size_limit(error):
        return None
    pushback = _pushback(error.trailing_metadata() if hasattr(error, "trailing_metadata") else None)
    if pushback is not None and pushback < 0:
        return None
    delay = pushback if pushback is not None else backoff(policy, attempt, rng)
    # Sleeping past the deadline would only end in DEADLINE_EXCEEDED; the real cause is more useful.
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    return delay


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
