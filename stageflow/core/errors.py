"""Domain errors that carry their gRPC status code by name.

This module imports nothing from grpc so that `inference/` may raise these too;
`stageflow.serving.interceptors` maps them to statuses in one place.
"""

from __future__ import annotations


class StageflowError(Exception):
    """Base of every error that should reach a caller with a specific status."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(StageflowError):
    """A request field is out of range or malformed; nothing was started."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(StageflowError):
    code = "NOT_FOUND"


class FailedPrecondition(StageflowError):
    code = "FAILED_PRECONDITION"


class DataLoss(StageflowError):
    """Stored bytes do not match their recorded digest."""

    code = "DATA_LOSS"


class ResourceExhausted(StageflowError):
    """Out of a resource or over a limit; `retry_after_seconds`, when set, is
    when trying again may succeed (sent as google.rpc.RetryInfo)."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(StageflowError):
    code = "UNAVAILABLE"


class Cancelled(StageflowError):
    """The caller cancelled, or its deadline passed, between two steps."""

    code = "CANCELLED"


class DeadlineExceeded(StageflowError):
    code = "DEADLINE_EXCEEDED"


class PermissionDenied(StageflowError):
    """The caller's credential (e.g. a share link's signature) does not allow it."""

    code = "PERMISSION_DENIED"


class OutOfRange(StageflowError):
    """A value past its valid range, e.g. a share link past its expiry."""

    code = "OUT_OF_RANGE"


class Unauthenticated(StageflowError):
    """No API key, a malformed or unknown one, or a revoked one."""

    code = "UNAUTHENTICATED"
