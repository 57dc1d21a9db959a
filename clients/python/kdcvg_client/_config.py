"""Client configuration: where to connect, how to authenticate, deadlines and the retry policy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
USER_AGENT = "kdcvg-python/0.1.0"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for the RPCs that may be retried (see the package docstring).

    The n-th retry waits ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds, or a
    uniformly random time below that with ``jitter`` (full jitter). ``max_attempts`` counts the first
    try, so 1 disables retries.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to reach a kdcvg server.

    ``timeout`` is the default deadline, in seconds, of the quick calls (Search, Get, Delete,
    Feedback, the prior calls, health); ``long_timeout`` that of the calls that move or make video
    (Ingest, Generate, Score, ScoreStream, DistillPrior). ``None`` means no deadline. A deadline covers
    every attempt of a call, retries and backoff included, and the whole of a stream.
    """

    target: str = "localhost:50051"
    api_key: str | None = None
    timeout: float | None = 30.0
    long_timeout: float | None = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Wait for the channel to connect (within the deadline) instead of failing fast with UNAVAILABLE.
    wait_for_ready: bool = False
    tls: bool = False
    # PEM root certificates; None uses the system roots. Setting it implies TLS.
    root_certificates: bytes | None = None
    # Overrides the name checked against the server certificate (tests, IP targets).
    tls_server_name: str | None = None
    # The server's receive limit is 64 MiB; matching it makes an oversized request fail here, early.
    max_send_message_bytes: int = 64 * MIB
    max_receive_message_bytes: int = 64 * MIB
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    keepalive_without_calls: bool = False
    # Extra metadata sent with every call, for example a request-tracing header.
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, **overrides: object) -> ClientConfig:
        """Reads KDCVG_TARGET, KDCVG_API_KEY and KDCVG_ROOT_CERTS (a PEM file path); keyword
        arguments win over the environment."""
        values: dict[str, object] = {}
        if target := os.environ.get("KDCVG_TARGET"):
            values["target"] = target
        if api_key := os.environ.get("KDCVG_API_KEY"):
            values["api_key"] = api_key
        if roots := os.environ.get("KDCVG_ROOT_CERTS"):
            values["root_certificates"] = Path(roots).read_bytes()
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.root_certificates is not None

    def channel_options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_without_calls)),
            ("grpc.primary_user_agent", USER_AGENT),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.api_key:
            return self.metadata
        return (("authorization", f"Bearer {self.api_key}"), *self.metadata)
