"""The orchestrator SIGKILLed mid-batch and restarted: every job completes exactly once.

A cluster of its own (killing the orchestrator must not disturb the shared
one), with the stage cache off so a recomputed stage cannot hide behind a
cache hit. Stage calls are counted on the stage side ("run.done" log lines).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.storage import LocalStore
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.conftest import log_events

STAGES = ("base", "refine", "upscale")
BATCH = 8
WAIT = 300  # seconds for the whole batch; it normally takes well under a minute


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("durable-cluster")
    with LocalCluster(
        state_dir=state,
        models_dir=fixture_models,
        torch_threads=1,
        orchestrator_args=["--stage-cache", "false", "--max-running-jobs", "2"],
    ) as cluster:
        yield cluster


def done_calls(cluster: LocalCluster) -> dict[tuple[str, str], int]:
    """(job id, stage) -> finished calls of that stage for that job."""
    counts: dict[tuple[str, str], int] = {}
    for stage in STAGES:
        for event in log_events(cluster, stage):
            if event.get("event") == "run.done":
                key = (str(event.get("job_id")), stage)
                counts[key] = counts.get(key, 0) + 1
    return counts


def downloaded_sizes(rows: list[dict[str, object]]) -> list[int]:
    return [Path(str(row["final_path"])).stat().st_size for row in rows]


async def stored_jobs(cluster: LocalCluster) -> list[pb.Job]:
    """The orchestrator's DB as it was left (read while the orchestrator is dead)."""
    store = SqliteJobStore(cluster.state_dir / "orchestrator.sqlite")
    try:
        return await store.list_jobs(100)
    finally:
        await store.close()


async def test_orchestrator_killed_mid_batch_loses_and_duplicates_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    bundles = tmp_path / "bundles.jsonl"
    bundles.write_text(
        "".join(
            json.dumps({"base": "a red circle", "style": "durability", "seed": 500 + n,
                        "width": 32, "height": 32}) + "\n"
            for n in range(BATCH)
        )
    )  # fmt: skip
    out, summary = tmp_path / "out", tmp_path / "summary.jsonl"
    # The real CLI, as a user runs it; this loop only polls it.
    batch = subprocess.Popen(  # noqa: ASYNC220
        [
            sys.executable, "-m", "stageflow.cli", "batch", str(bundles),
            "--concurrency", str(BATCH),
            "--address", cluster.orchestrator_address, "--out", str(out),
            "--summary", str(summary),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # Mid-batch: a few stage calls done, most of the batch still to run.
        deadline = time.monotonic() + WAIT
        while sum(done_calls(cluster).values()) < 4:
            assert batch.poll() is None, batch.communicate()[0].decode()
            assert time.monotonic() < deadline, "the batch made no progress"
            await asyncio.sleep(0.05)
        orchestrator = cluster.process("orchestrator")
        orchestrator.kill()
        orchestrator.wait()

        at_kill = await stored_jobs(cluster)
        finished_before = {
            (job.job_id, run.stage)
            for job in at_kill
            for run in job.stages
            if run.state == pb.STAGE_STATE_SUCCEEDED
        }
        assert any(job.state != pb.JOB_STATE_SUCCEEDED for job in at_kill) or len(at_kill) < BATCH

        cluster.restart("orchestrator")
        output, _ = await asyncio.to_thread(batch.communicate, timeout=WAIT)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 0, output.decode()

    rows = [json.loads(line) for line in summary.read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, BATCH + 1))
    assert all(row["status"] == "succeeded" for row in rows), rows
    async with StageflowClient(cluster.orchestrator_address) as client:
        jobs = await client.list(page_size=100)
    assert len(jobs) == BATCH  # none lost, none duplicated
    assert {job.job_id for job in jobs} == {row["job_id"] for row in rows}

    store = LocalStore(cluster.state_dir / "store")
    for job in jobs:
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
        assert store.exists(job.final.key)
    assert all(size > 0 for size in downloaded_sizes(rows))

    calls = done_calls(cluster)
    for job in jobs:
        for stage in STAGES:
            n = calls.get((job.job_id, stage), 0)
            if (job.job_id, stage) in finished_before:
                assert n == 1, f"{stage} of {job.job_id} finished before the kill, ran again"
            else:
                # At most the call in flight at the kill may have finished unseen.
                assert 1 <= n <= 2, f"{stage} of {job.job_id} ran {n} times"
    assert sum(calls.values()) <= BATCH * len(STAGES) + 2  # max_running_jobs in flight
