"""A bad setting stops every process with one line and exit status 2; a store
or port it cannot use at start with one line and status 1; never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BAD_BUCKET = "s3://Bad_Bucket?endpoint=http://127.0.0.1:1"
PROCESSES = {
    "stage": [sys.executable, "-m", "stageflow.stage", "base"],
    "orchestrator": [sys.executable, "-m", "stageflow.orchestrator"],
    "gateway": [sys.executable, "-m", "stageflow.gateway"],
}


def _run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _problem_lines(stderr: str) -> list[str]:
    """stderr without log lines (JSON or console) and the usage hint."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip()
        and not line.startswith(("{", "20"))  # a log line: JSON, or a timestamp
        and "--help lists the options" not in line
    ]


@pytest.mark.parametrize("name", ["stage", "orchestrator"])
def test_a_bad_bucket_name_is_a_one_line_settings_error(name: str, tmp_path: Path) -> None:
    done = _run(PROCESSES[name], tmp_path, STAGEFLOW_STORE_URL=BAD_BUCKET)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = _problem_lines(done.stderr)
    assert "--store-url / STAGEFLOW_STORE_URL" in line and "Bad_Bucket" in line


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_malformed_value_is_a_one_line_settings_error(name: str, tmp_path: Path) -> None:
    done = _run(PROCESSES[name], tmp_path, STAGEFLOW_PORT="eighty")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = _problem_lines(done.stderr)
    assert "--port / STAGEFLOW_PORT" in line


@pytest.mark.parametrize("name", ["stage", "orchestrator"])
def test_an_unreachable_store_is_one_line(name: str, tmp_path: Path) -> None:
    done = _run(
        PROCESSES[name], tmp_path, STAGEFLOW_STORE_URL="s3://fine?endpoint=http://127.0.0.1:1"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = _problem_lines(done.stderr)
    assert "unreachable" in line


@pytest.mark.parametrize("name", ["orchestrator", "gateway"])
def test_a_busy_port_is_one_line(name: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(PROCESSES[name], tmp_path, STAGEFLOW_PORT=str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert any(f"127.0.0.1:{port}" in line for line in _problem_lines(done.stderr))
