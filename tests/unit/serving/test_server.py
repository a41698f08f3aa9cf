"""The server runner: health around startup and drain, reflection, message
limits. SIGTERM and SIGUSR1 sent to a real server process are tested in
tests/integration/test_server_signals.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stageflow.serving.channels import client_channel
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import CommonSettings
from stageflow.v1 import stage_pb2, stage_pb2_grpc

STAGE = stage_pb2.DESCRIPTOR.services_by_name["StageService"].full_name
MiB = 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeStage(stage_pb2_grpc.StageServiceServicer):
    async def Describe(
        self, request: stage_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> stage_pb2.DescribeResponse:
        return stage_pb2.DescribeResponse(kind="txt2img")


def _identity(x: bytes) -> bytes:
    return x


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def register_all(server: grpc.aio.Server) -> None:
    stage_pb2_grpc.add_StageServiceServicer_to_server(FakeStage(), server)
    echo = grpc.unary_unary_rpc_method_handler(_echo, _identity, _identity)
    generic = grpc.method_handlers_generic_handler("t.Echo", {"Echo": echo})
    server.add_generic_rpc_handlers([generic])


def read_port(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


async def wait_for_port(path: Path, alive: Callable[[], bool]) -> int:
    """Poll for the port file (a server on port 0 announces itself there)."""
    async with asyncio.timeout(20):
        while (port := read_port(path)) is None:
            assert alive(), "server exited before writing its port file"
            await asyncio.sleep(0.02)
    return port


async def next_status(watch: Any) -> int:
    response = await asyncio.wait_for(watch.read(), 10)
    assert response is not grpc.aio.EOF
    return int(response.status)


async def list_services(channel: grpc.aio.Channel) -> set[str]:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=STAGE))
    listed = await call.read()
    described = await call.read()
    await call.done_writing()
    assert described.file_descriptor_response.file_descriptor_proto, "StageService not described"
    return {s.name for s in listed.list_services_response.service}


@contextlib.asynccontextmanager
async def running(
    settings: CommonSettings,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[asyncio.Task[None], grpc.aio.Channel]]:
    assert settings.port_file is not None
    task = asyncio.create_task(
        serve([Service(STAGE, register_all)], settings, startup=startup, shutdown=shutdown)
    )
    port = await wait_for_port(settings.port_file, lambda: not task.done())
    try:
        async with client_channel(f"127.0.0.1:{port}") as channel:
            yield task, channel
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_health_follows_startup_then_shutdown_runs_after_drain(tmp_path: Path) -> None:
    loaded = asyncio.Event()
    events: list[str] = []

    async def startup() -> None:
        await loaded.wait()
        events.append("startup")

    async def shutdown() -> None:
        events.append("shutdown")

    settings = CommonSettings(port_file=tmp_path / "port", grace_seconds=1)
    async with running(settings, startup, shutdown) as (task, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", STAGE):
            check = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == NOT_SERVING, f"{service!r} serving before startup finished"
        watch = health.Watch(health_pb2.HealthCheckRequest(service=STAGE))
        assert await next_status(watch) == NOT_SERVING
        loaded.set()
        assert await next_status(watch) == SERVING
        watch.cancel()
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING

        assert await list_services(channel) >= {
            STAGE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        describe = stage_pb2_grpc.StageServiceStub(channel).Describe
        assert (await describe(stage_pb2.DescribeRequest())).kind == "txt2img"
    assert task.done() and events == ["startup", "shutdown"]
    assert not (tmp_path / "port").exists(), "stale port file left behind"


async def test_message_limits_are_explicit(tmp_path: Path) -> None:
    settings = CommonSettings(port_file=tmp_path / "port", max_message_bytes=6 * MiB)
    async with running(settings) as (_, channel):
        echo = channel.unary_unary("/t.Echo/Echo")
        big = b"x" * (5 * MiB)  # over gRPC's 4 MiB default, under our limit
        assert await echo(big) == big
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo(b"x" * (7 * MiB))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_startup_failure_raises_and_still_cleans_up(tmp_path: Path) -> None:
    events: list[str] = []

    async def startup() -> None:
        raise RuntimeError("weights missing")

    async def shutdown() -> None:
        events.append("shutdown")

    settings = CommonSettings(port_file=tmp_path / "port")
    with pytest.raises(RuntimeError, match="weights missing"):
        await serve([Service(STAGE, register_all)], settings, startup=startup, shutdown=shutdown)
    assert events == ["shutdown"]
    assert not (tmp_path / "port").exists()


async def test_sigterm_during_startup_stops_cleanly(tmp_path: Path) -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def startup() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a model load that never ends
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    settings = CommonSettings(port_file=tmp_path / "port")
    task = asyncio.create_task(serve([Service(STAGE, register_all)], settings, startup=startup))
    await wait_for_port(settings.port_file or Path(), lambda: not task.done())
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it on this loop
    await asyncio.wait_for(task, 10)
    assert cancelled == [True]


def test_port_in_use_is_an_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        settings = CommonSettings(port=s.getsockname()[1])
        with pytest.raises(OSError, match="cannot listen"):
            asyncio.run(serve([], settings))
