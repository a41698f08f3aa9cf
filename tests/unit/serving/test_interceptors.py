"""Every domain error reaches the caller as its status, unary and streaming."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_status import _async as rpc_status_aio

from stageflow.core.errors import (
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StageflowError,
    Unavailable,
)
from stageflow.core.logging import configure_logging
from stageflow.serving.channels import client_channel
from stageflow.serving.interceptors import ErrorInterceptor

ERRORS: dict[str, tuple[Exception | None, grpc.StatusCode, str]] = {
    "ok": (None, grpc.StatusCode.OK, ""),
    "invalid": (
        InvalidArgument("steps", "must be in [1, 200], got 0"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "steps: must be in [1, 200], got 0",
    ),
    "not_found": (NotFound("image k: not found"), grpc.StatusCode.NOT_FOUND, "image k: not found"),
    "precondition": (FailedPrecondition("bad"), grpc.StatusCode.FAILED_PRECONDITION, "bad"),
    "data_loss": (DataLoss("sha mismatch"), grpc.StatusCode.DATA_LOSS, "sha mismatch"),
    "exhausted": (
        ResourceExhausted("queue full"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
    ),
    "unavailable": (Unavailable("store down"), grpc.StatusCode.UNAVAILABLE, "store down"),
    "cancelled": (
        Cancelled("cancelled at step 3"),
        grpc.StatusCode.CANCELLED,
        "cancelled at step 3",
    ),
    "deadline": (DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"),
    "base": (StageflowError("store refused"), grpc.StatusCode.INTERNAL, "store refused"),
    "bug": (
        RuntimeError("secret path /x"),
        grpc.StatusCode.INTERNAL,
        "internal error (request id rid-1)",
    ),
}
ABORT = "abort"  # the handler aborts by itself: must pass through untouched


def _raise_for(case: str) -> None:
    err = ERRORS[case][0]
    if err is not None:
        raise err


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request.decode() == ABORT:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    _raise_for(request.decode())
    return b"done"


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    if request.decode() == ABORT:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    _raise_for(request.decode())
    yield b"last"


async def writer(request: bytes, context: grpc.aio.ServicerContext) -> None:
    # The other streaming style: context.write() instead of yield.
    await context.write(b"first")
    _raise_for(request.decode())
    await context.write(b"last")


def _identity(x: bytes) -> bytes:
    return x


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
    "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
    "Write": grpc.unary_stream_rpc_method_handler(writer, _identity, _identity),
}


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    configure_logging(level="DEBUG", json=True, service="test")

    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        """Every line logged so far (readouterr consumes, so keep what it gave)."""
        raw = capsys.readouterr().err
        seen.extend(json.loads(line) for line in raw.splitlines() if line)
        return list(seen)

    yield read
    configure_logging()  # back to a handler on the real stderr
    structlog.contextvars.clear_contextvars()


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Svc", HANDLERS)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with client_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


META = (("x-request-id", "rid-1"), ("x-job-id", "job-7"))


@pytest.mark.parametrize("case", ERRORS)
async def test_unary_status(channel: grpc.aio.Channel, case: str) -> None:
    _, code, message = ERRORS[case]
    call = channel.unary_unary("/t.Svc/Unary")(case.encode(), metadata=META)
    if code == grpc.StatusCode.OK:
        assert await call == b"done"
        return
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert (err.value.code(), err.value.details()) == (code, message)


@pytest.mark.parametrize("method", ["Stream", "Write"])
@pytest.mark.parametrize("case", ERRORS)
async def test_streaming_status_after_first_message(
    channel: grpc.aio.Channel, case: str, method: str
) -> None:
    _, code, message = ERRORS[case]
    call = channel.unary_stream(f"/t.Svc/{method}")(case.encode(), metadata=META)
    received = []
    ok = code == grpc.StatusCode.OK
    with contextlib.nullcontext() if ok else pytest.raises(grpc.aio.AioRpcError):
        async for response in call:
            received.append(response)
    assert received == ([b"first", b"last"] if ok else [b"first"])
    assert await call.code() == code
    if not ok:
        assert await call.details() == message


async def test_invalid_argument_carries_bad_request_details(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/t.Svc/Unary")(b"invalid")
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status_aio.from_call(call)
    assert status is not None and status.message == "steps: must be in [1, 200], got 0"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    (violation,) = bad_request.field_violations
    assert (violation.field, violation.description) == ("steps", "must be in [1, 200], got 0")


@pytest.mark.parametrize("method", ["Unary", "Stream"])
async def test_handler_abort_passes_through(channel: grpc.aio.Channel, method: str) -> None:
    rpc = channel.unary_unary if method == "Unary" else channel.unary_stream
    call = rpc(f"/t.Svc/{method}")(ABORT.encode())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if method == "Unary":
            await call
        else:
            async for _ in call:
                pass
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, "no")


async def test_one_log_line_per_call_with_context(
    channel: grpc.aio.Channel, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    await channel.unary_unary("/t.Svc/Unary")(b"ok", metadata=META)
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary("/t.Svc/Unary")(b"not_found")
    # The server logs a failed call after its status reaches the client.
    async with asyncio.timeout(5):
        while len(rpc_lines := [line for line in log_lines() if line["event"] == "rpc"]) < 2:  # noqa: ASYNC110 (log lines from the server)
            await asyncio.sleep(0.01)
    assert len(rpc_lines) == 2
    ok, missing = rpc_lines
    assert ok["method"] == "/t.Svc/Unary" and ok["code"] == "OK"
    assert (ok["request_id"], ok["job_id"], ok["service"]) == ("rid-1", "job-7", "test")
    assert ok["duration_ms"] >= 0
    assert missing["code"] == "NOT_FOUND"
    assert len(missing["request_id"]) == 32 and "job_id" not in missing  # generated id


async def test_unknown_error_logs_traceback_and_hides_message(
    channel: grpc.aio.Channel, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/t.Svc/Unary")(b"bug", metadata=META)
    assert "secret path" not in (err.value.details() or "")
    # As above: the server's lines of a failed call land after its status.
    async with asyncio.timeout(5):
        while not [line for line in log_lines() if line["event"] == "rpc"]:  # noqa: ASYNC110 (log lines from the server)
            await asyncio.sleep(0.01)
    lines = log_lines()
    (error,) = [line for line in lines if line["event"] == "unhandled error"]
    assert error["request_id"] == "rid-1"
    assert error["exception"][0]["exc_type"] == "RuntimeError"
    (rpc,) = [line for line in lines if line["event"] == "rpc"]
    assert rpc["code"] == "INTERNAL" and rpc["level"] == "warning"
