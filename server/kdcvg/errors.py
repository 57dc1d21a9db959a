"""Domain errors. Modules below the gRPC layer raise these; services map each to one status code."""

from __future__ import annotations


class KdcvgError(Exception):
    """Base class: the message is shown to the caller, so it says what to do."""


class InvalidInput(KdcvgError):
    """The request is malformed or out of range (INVALID_ARGUMENT)."""


class NotFound(KdcvgError):
    """The named object does not exist for this tenant (NOT_FOUND)."""


class TooLarge(KdcvgError):
    """The request exceeds a configured size limit (RESOURCE_EXHAUSTED)."""


class Overloaded(KdcvgError):
    """The server is at its limit of in-flight work (RESOURCE_EXHAUSTED)."""


class NotReady(KdcvgError):
    """A component is still loading or has been shut down (UNAVAILABLE)."""


class FailedPrecondition(KdcvgError):
    """The request is valid but the system is not in a state to serve it (FAILED_PRECONDITION)."""
