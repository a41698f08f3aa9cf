"""Real server processes started by a test: started with their output in a log
file, waited for (port file, then grpc.health.v1 SERVING), and stopped."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str) -> bool:
    """Whether the server at `address` answers health SERVING (overall)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_serving(
    proc: subprocess.Popen[bytes], port_file: Path, log: Path, timeout: float = 90
) -> str:
    """The process's loopback address once it is SERVING; fails the test with
    the tail of its log when it exits or does not get there in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text.isdigit() and is_serving(address := f"127.0.0.1:{text}"):
            return address
        time.sleep(0.1)
    pytest.fail(f"{port_file.name}: the process did not become SERVING:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` as a process writing stdout and stderr to `log`; on exit SIGTERM
    (the server drains), then SIGKILL if it has not stopped in 20 s."""
    with log.open("wb") as out:  # the child keeps its own handle
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
