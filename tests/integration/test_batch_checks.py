"""`stageflow batch` against the real orchestrator: every line is checked by the
orchestrator (SubmitJob with validate_only: its limits, the stage rules, the
stages' Describe) before any is submitted; an unreachable orchestrator fails
the batch within seconds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient

pytestmark = pytest.mark.integration


def _batch(bundles: Path, address: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "stageflow.cli", "batch", str(bundles), "--address", address,
            "--out", str(tmp_path / "out"), "--summary", str(tmp_path / "summary.jsonl"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_a_line_the_stages_would_refuse_stops_the_batch_before_any_submit(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    lines = [
        {"base": "a red circle", "width": 32, "height": 32, "seed": 1},
        {"base": "a red circle", "width": 32, "height": 30, "seed": 2},  # not a multiple of 8
        {"base": "a red circle", "text": "two\nlines", "seed": 3},  # overlay text on one line
        {"base": "a red circle", "refine_options": {"strength": 0.01}, "seed": 4},  # 0 steps
    ]
    bundles = tmp_path / "bundles.jsonl"
    bundles.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with StageflowClient(local_cluster.orchestrator_address) as client:
        before = {job.job_id for job in await client.list(page_size=1000)}
        done = _batch(bundles, local_cluster.orchestrator_address, tmp_path)
        after = {job.job_id for job in await client.list(page_size=1000)}
    assert done.returncode == 2, done.stderr
    for number, field in ((2, "height"), (3, "bundle.overlay_text"), (4, "refine.strength")):
        assert f"line {number}: INVALID_ARGUMENT: {field}" in done.stderr, done.stderr
    assert "line 1:" not in done.stderr
    assert "3 of 4 lines rejected; nothing was submitted" in done.stderr
    assert after == before
    assert not (tmp_path / "summary.jsonl").exists()


def test_an_orchestrator_never_reached_fails_within_ten_seconds(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, then closed: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bundles = tmp_path / "bundles.jsonl"
    bundles.write_text(json.dumps({"base": "a red circle"}) + "\n")
    started = time.monotonic()
    done = _batch(bundles, f"127.0.0.1:{port}", tmp_path)
    assert time.monotonic() - started < 10 + 3  # the interpreter's start included
    assert done.returncode == 1
    assert "cannot reach the orchestrator" in done.stderr and "Traceback" not in done.stderr
