"""The one place where domain errors become gRPC statuses, and where every
call gets its log context and its one summary log line."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from stageflow.core.errors import InvalidArgument, ResourceExhausted, StageflowError
from stageflow.core.logging import get_logger
from stageflow.serving import metrics, tracing
from stageflow.serving.limits import SELF_CHECKED, check_request

log = get_logger(__name__)

# Probes and tooling call these often; their lines would drown the real ones.
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Outcomes that mean the server, not the caller, has a problem.
_SERVER_FAULTS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
}


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def _status_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions hand back the raw number
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


# Longest status message sent: a message is metadata, which grpc caps at 8 KiB
# in all (a longer one would turn the answer into RESOURCE_EXHAUSTED).
MAX_STATUS_MESSAGE_CHARS = 1000


def _short(message: str) -> str:
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    return message[: MAX_STATUS_MESSAGE_CHARS - 15] + "... (truncated)"


async def _abort(context: grpc.aio.ServicerContext, err: Exception, request_id: str) -> None:
    """Abort the call with the status `err` stands for (abort always raises)."""
    if isinstance(err, InvalidArgument):
        # Rich details let a client show which field was wrong without
        # parsing the message (google.rpc.BadRequest, as the grpc examples do).
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_short(err.field), description=_short(err.message.removeprefix(f"{err.field}: "))
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=_short(err.message), details=[detail]
        )
        await context.abort_with_status(rpc_status.to_status(status))
    elif isinstance(err, ResourceExhausted) and err.retry_after_seconds is not None:
        # google.rpc.RetryInfo: when to try again, for clients and the gateway's Retry-After.
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(err.retry_after_seconds * 1000))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message=err.message, details=[detail]
        )
        await context.abort_with_status(rpc_status.to_status(status))
    elif isinstance(err, StageflowError):
        code = grpc.StatusCode.__members__.get(err.code, grpc.StatusCode.INTERNAL)
        await context.abort(code, _short(err.message))
    else:
        # The message stays generic (it may hold paths or data); the request
        # id ties the caller's report to the logged traceback.
        log.error("unhandled error", exc_info=err)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method's behaviour with `_wrap(method, behavior)`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _rewrap(handler, str(handler_call_details.method), self._wrap)

    def _wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError


class ErrorInterceptor(_WrappingInterceptor):
    """Maps `StageflowError` to its status and anything else to INTERNAL with a
    logged traceback; binds request_id, job_id and method to the log context
    for the call; logs one line per call with its status and duration.

    Request id and job id come from the ``x-request-id`` / ``x-job-id``
    metadata; a request id is generated when absent.
    """

    def _wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        # A streaming handler either yields its responses (async generator) or
        # awaits context.write(); the wrapper must keep the same style.
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with _call_scope(method, context) as request_id:
                    try:
                        _check_limits(method, request)
                        async for response in behavior(request, context):
                            yield response
                    except (grpc.aio.AbortError, asyncio.CancelledError):
                        raise
                    except Exception as err:
                        await _abort(context, err, request_id)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _call_scope(method, context) as request_id:
                try:
                    _check_limits(method, request)
                    result = behavior(request, context)
                    # A plain function (e.g. a sync handler) returns its answer.
                    return await result if inspect.isawaitable(result) else result
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as err:
                    await _abort(context, err, request_id)

        return unary


def _check_limits(method: str, request: Any) -> None:
    """Every field of a stageflow request within its maximum (serving.limits),
    before the handler does any work; a service that authenticates its callers
    checks them itself, after authentication (`limits.checks_itself`)."""
    service = method.split("/")[1] if method.count("/") >= 2 else ""
    if isinstance(request, Message) and service not in SELF_CHECKED:
        check_request(request)


def _rewrap(
    handler: grpc.RpcMethodHandler,
    method: str,
    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour passed through `wrap`."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(method, handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(method, handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(method, handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(method, handler.stream_stream), **kwargs)


@asynccontextmanager
async def _call_scope(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[str]:
    """Bind the log context for one call; log its outcome on the way out."""
    request_id = _metadata(context, "x-request-id") or uuid.uuid4().hex
    ids = {"request_id": request_id, "method": method}
    if job_id := _metadata(context, "x-job-id"):
        ids["job_id"] = job_id
    start = time.perf_counter()
    code: grpc.StatusCode | None = None
    with structlog.contextvars.bound_contextvars(**ids):
        try:
            yield request_id
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            code = code or _status_code(context)
            if code in _SERVER_FAULTS:
                level = logging.WARNING
            elif method.startswith(_QUIET_PREFIXES):
                level = logging.DEBUG
            else:
                level = logging.INFO
            duration_ms = round((time.perf_counter() - start) * 1000, 1)
            log.log(level, "rpc", code=code.name, duration_ms=duration_ms)


class TelemetryInterceptor(_WrappingInterceptor):
    """Per-call Prometheus metrics (latency by status, requests, in-flight) and
    the call's server span. Install it before ErrorInterceptor (outermost), so
    it sees the status the caller gets."""

    def __init__(self, service: str) -> None:
        self._service = service

    def _wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._observe(method, context):
                    async for response in behavior(request, context):
                        yield response

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._observe(method, context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

        return unary

    @contextlib.contextmanager
    def _observe(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        in_flight = metrics.RPC_IN_FLIGHT.labels(self._service, method)
        in_flight.inc()
        start = time.perf_counter()
        code: grpc.StatusCode | None = None
        # Health probes would flood a trace store; their metrics are enough.
        spans = (
            contextlib.nullcontext()
            if method.startswith(_QUIET_PREFIXES)
            else tracing.server_span(method, context.invocation_metadata())
        )
        try:
            with spans as span:
                try:
                    yield
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    code = code or _status_code(context)
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", code.name)
                        if code is not grpc.StatusCode.OK:
                            span.set_status(trace.StatusCode.ERROR, code.name)
        finally:
            in_flight.dec()
            metrics.RPC_DURATION.labels(
                self._service, method, code.name if code else "UNKNOWN"
            ).observe(time.perf_counter() - start)
            metrics.RPC_REQUESTS.labels(
                self._service, method, code.name if code else "UNKNOWN"
            ).inc()
