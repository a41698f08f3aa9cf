"""The server runner in a real process, and real signals: SIGTERM lets in-flight
calls finish within the grace, SIGUSR1 stops advertising but keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stageflow.serving.channels import client_channel
from stageflow.serving.processes import ServerProcess
from tests.unit.serving.test_server import NOT_SERVING, SERVING, next_status

SLOW_SERVER = Path(__file__).with_name("slow_server.py")


@contextlib.asynccontextmanager
async def slow_server(
    tmp_path: Path, grace: float
) -> AsyncIterator[tuple[subprocess.Popen[bytes], grpc.aio.Channel]]:
    port_file = tmp_path / "port"
    argv = [sys.executable, str(SLOW_SERVER), "--port-file", str(port_file)]
    argv += ["--grace-seconds", str(grace), "--log-json"]
    server = ServerProcess("slow server", argv, log=tmp_path / "server.log", port_file=port_file)
    try:
        await asyncio.to_thread(server.start().wait_ready, 30)
        async with client_channel(server.address) as channel:
            yield server.popen, channel
    finally:
        await asyncio.to_thread(server.stop, 0)


def log_events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "server.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_sigterm_drains_in_flight_call(tmp_path: Path) -> None:
    async with slow_server(tmp_path, grace=5) as (proc, channel):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert await next_status(watch) == SERVING
        call = channel.unary_stream("/stageflow.test.Slow/Count")(b"6,0.15")
        assert await call.read() == b"0"

        proc.send_signal(signal.SIGTERM)
        assert await next_status(watch) == NOT_SERVING
        watch.cancel()  # an open watch would itself hold the drain for the whole grace

        rest = []
        while (message := await call.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert rest == [b"1", b"2", b"3", b"4", b"5"]
        assert await call.code() == grpc.StatusCode.OK
        assert await asyncio.to_thread(proc.wait, 10) == 0
    assert not (tmp_path / "port").exists()
    events = [line["event"] for line in log_events(tmp_path)]
    assert events.index("draining") < events.index("stopped")


async def test_call_longer_than_grace_is_cut_and_process_exits(tmp_path: Path) -> None:
    async with slow_server(tmp_path, grace=0.3) as (proc, channel):
        call = channel.unary_stream("/stageflow.test.Slow/Count")(b"100,0.05")
        assert await call.read() == b"0"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert time.monotonic() - start < 3, "drain ignored grace_seconds"


async def test_sigusr1_stops_advertising_but_keeps_serving_until_sigterm(tmp_path: Path) -> None:
    """What a Kubernetes preStop hook relies on: readiness fails first, calls still work."""
    async with slow_server(tmp_path, grace=5) as (proc, channel):
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert await next_status(watch) == SERVING

        proc.send_signal(signal.SIGUSR1)
        assert await next_status(watch) == NOT_SERVING
        watch.cancel()
        # a call that arrives after the flip is still answered in full
        call = channel.unary_stream("/stageflow.test.Slow/Count")(b"3,0.01")
        assert [m async for m in call] == [b"0", b"1", b"2"]
        assert proc.poll() is None
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == NOT_SERVING

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    events = [line["event"] for line in log_events(tmp_path)]
    assert events.index("draining") > events.index(
        "not serving (SIGUSR1): still answering calls until SIGTERM"
    )
