"""The Python client of the orchestrator, for people, scripts and internal services.

It needs only grpcio and protobuf (a plain ``pip install stageflow``): no
model stack, no OpenTelemetry, no pydantic.

- `StageflowClient` is async (grpc.aio); `SyncStageflowClient` is the same API,
  blocking. Both return the generated protobuf messages of `stageflow.v1`.
- The address comes from the argument, else STAGEFLOW_ADDRESS, else
  127.0.0.1:50051 (`ClientSettings.from_env`).
- Every failed call raises a `StageflowClientError` subclass, one per gRPC status
  code (`NotFound`, `InvalidArgument` with its `field_violations`, ...), never a raw
  grpc error.
- `download()` / `fetch_final()` stream an artifact through the orchestrator
  and verify its sha256 (`DataLoss` otherwise): no store access, no URL.
"""

from __future__ import annotations

from stageflow.client import errors
from stageflow.client.aio import StageflowClient, open_channel
from stageflow.client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StageflowClientError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from stageflow.client.options import job_state, options
from stageflow.client.settings import DEFAULT_ADDRESS, ClientSettings
from stageflow.client.sync import SyncStageflowClient

__all__ = [
    "DEFAULT_ADDRESS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClientSettings",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "StageflowClient",
    "StageflowClientError",
    "SyncStageflowClient",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "errors",
    "job_state",
    "open_channel",
    "options",
]
