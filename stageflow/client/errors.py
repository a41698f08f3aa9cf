"""The client's one exception hierarchy: a class per gRPC status code.

Every failed call of `StageflowClient` raises a `StageflowClientError`
subclass, never a raw `grpc.RpcError`: catch `NotFound`, `InvalidArgument`, ...
or the base class. Each carries the status (`code`), the server's message and,
for bad input, the field violations the servers attach as a
`google.rpc.BadRequest` detail (so a caller can tell which field was wrong
without parsing the message). The client raises the same classes for what it
checks itself, e.g. `DataLoss` when downloaded bytes do not match their sha256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# Trailing metadata key of the rich status (google.rpc.Status), as grpc_status sends it.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path (e.g. "refine.strength") and what is wrong."""

    field: str
    description: str


class StageflowClientError(Exception):
    """A call failed with `code`; `message` is the server's (or the client's) text.

    `str(err)` is "CODE: message", the form the CLI prints.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        field_violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        # Seconds the server asks to wait before retrying (google.rpc.RetryInfo).
        self.retry_after = retry_after

    @property
    def status(self) -> str:
        """The status code's name, e.g. "NOT_FOUND"."""
        return str(self.code.name)

    @property
    def field(self) -> str:
        """The first violated field's path; "" when the error names none."""
        return self.field_violations[0].field if self.field_violations else ""

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class Cancelled(StageflowClientError):
    """The call (or the job's stage call) was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unknown(StageflowClientError):
    """The server answered a status it did not classify (stageflow servers never do)."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(StageflowClientError):
    """A request field is out of range or malformed; nothing was started.
    `field_violations` names the fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def of_field(cls, field: str, problem: str) -> InvalidArgument:
        """ "field: problem", with that one field violation (as the servers send it)."""
        return cls(f"{field}: {problem}", field_violations=[FieldViolation(field, problem)])


class DeadlineExceeded(StageflowClientError):
    """The call's deadline (the client's timeout, or the job's) passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(StageflowClientError):
    """No such job, version, stage or artifact."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StageflowClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(StageflowClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(StageflowClientError):
    """A queue is full or a limit is reached; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(StageflowClientError):
    """The request is valid but the state is not, e.g. a rerun of a running job
    or the final image of a job that has not succeeded."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(StageflowClientError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(StageflowClientError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(StageflowClientError):
    """The server does not offer this call (e.g. an older orchestrator)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(StageflowClientError):
    """The server failed; its message names the request id of the logged traceback."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(StageflowClientError):
    """The server cannot be reached or is shutting down; retrying is safe for reads."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(StageflowClientError):
    """Bytes do not match their recorded sha256 (on the server's store, or as received)."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(StageflowClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


ERRORS: dict[grpc.StatusCode, type[StageflowClientError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
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


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status in the call's trailing metadata, if the server sent one."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _field_violations(status: status_pb2.Status | None) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return violations


def _retry_after(status: status_pb2.Status | None) -> float | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


def _code(err: Any) -> grpc.StatusCode:
    code = err.code() if callable(getattr(err, "code", None)) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def from_rpc_error(err: grpc.RpcError) -> StageflowClientError:
    """The client exception for a failed call (grpc.RpcError or grpc.aio.AioRpcError)."""
    code = _code(err)
    details = err.details() if callable(getattr(err, "details", None)) else None
    message = str(details) if details else code.name.lower().replace("_", " ")
    cls = ERRORS.get(code, Unknown)
    rich = _rich_status(err)
    return cls(message, field_violations=_field_violations(rich), retry_after=_retry_after(rich))
