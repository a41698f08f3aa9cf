"""gRPC status -> HTTP status, in one table, and the JSON error bodies.

Every error the gateway answers is ``{"error": {"code", "message", "field"}}``
(`code` the gRPC status name, `field` the offending request field or null);
the OpenAI-compatible routes answer the same content in OpenAI's shape
(`openai_error`). The table follows google.rpc's HTTP mapping, except
FAILED_PRECONDITION: 409, since here it means "not in that state yet" (a job
still running, an artifact not produced yet), a conflict with the resource's
state rather than a malformed request.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from stageflow.client import StageflowClientError

HTTP_STATUS: dict[str, int] = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


OPENAI_PATHS = ("/v1/images/", "/v1/models")
# OpenAI's error types by HTTP status (its clients pick the exception class by status).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": code.lower()}}


class GatewayError(Exception):
    """An error the gateway finds itself (bad JSON, a bad path value), by gRPC code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


FIELD_CHARS = 64


def quote_field(name: str) -> str:
    """A field path for an error, cut to FIELD_CHARS so no answer grows with the input."""
    return name if len(name) <= FIELD_CHARS else name[: FIELD_CHARS - 1] + "…"


def error_body(code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def from_exception(err: Exception) -> tuple[int, str, str, str | None]:
    """(HTTP status, gRPC code name, message, field) of a client or gateway error."""
    if isinstance(err, StageflowClientError):
        code, message, field = err.status, err.message, err.field or None
    elif isinstance(err, GatewayError):
        code, message, field = err.code, err.message, err.field
    elif isinstance(err, RequestValidationError):
        first = err.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        # A path may hold a caller's own key (an unknown body field): bound it.
        field = quote_field(".".join(loc)) or None
        code, message = "INVALID_ARGUMENT", f"{field or 'request'}: {first.get('msg', 'invalid')}"
    else:
        raise TypeError(f"not an API error: {type(err).__name__}")
    return HTTP_STATUS.get(code, 500), code, message, field


def _headers(status: int, err: Exception | None = None) -> dict[str, str]:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    retry_after = getattr(err, "retry_after", None)
    if status == 429 and retry_after is not None:
        return {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return {}


async def json_error(request: Request, err: Exception) -> JSONResponse:
    status, code, message, field = from_exception(err)
    if request.url.path.startswith(OPENAI_PATHS):
        body = openai_error(status, code, message, field)
        return JSONResponse(body, status, _headers(status, err))
    return JSONResponse(error_body(code, message, field), status, _headers(status, err))
