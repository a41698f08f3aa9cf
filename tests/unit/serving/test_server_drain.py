"""serve()'s drain hook: first step of a shutdown, health already NOT_SERVING,
calls still served, given the grace; the server then stops with what is left."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stageflow.serving.channels import client_channel
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import CommonSettings

WAIT = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING


def _port(path: Path) -> int:
    deadline = time.monotonic() + WAIT
    while not (path.exists() and path.read_text().strip().isdigit()):
        assert time.monotonic() < deadline, "no port file"
        time.sleep(0.02)
    return int(path.read_text())


async def test_drain_runs_before_the_server_stops_and_shutdown_after(tmp_path: Path) -> None:
    events: list[object] = []
    draining = asyncio.Event()
    finish_drain = asyncio.Event()

    async def drain(seconds: float) -> None:
        events.append(("drain", seconds))
        draining.set()
        await finish_drain.wait()

    async def shutdown() -> None:
        events.append("shutdown")

    def register(server: grpc.aio.Server) -> None:
        pass

    settings = CommonSettings(port_file=tmp_path / "port", grace_seconds=3)
    task = asyncio.create_task(
        serve([Service("test.Nothing", register)], settings, drain=drain, shutdown=shutdown)
    )
    port = await asyncio.to_thread(_port, tmp_path / "port")
    async with client_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(WAIT):
            async for reply in health.Watch(health_pb2.HealthCheckRequest()):
                if reply.status == SERVING:
                    break
        task.cancel()  # as SIGTERM does: the shutdown begins
        await asyncio.wait_for(draining.wait(), WAIT)
        # Mid-drain: still answering, but no longer advertised.
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert events == [("drain", 3.0)]
        finish_drain.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert events == [("drain", 3.0), "shutdown"]
