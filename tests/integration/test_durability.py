"""The orchestrator SIGKILLed or SIGTERMed mid-batch and restarted: every job
completes exactly once.

A cluster of its own (killing the orchestrator must not disturb the shared
one), with the stage cache off so a recomputed stage cannot hide behind a
cache hit, once over each job store (`job_store_url`: SQLite, PostgreSQL,
where a restarted orchestrator is a new replica that claims the jobs once
the dead one's short lease has run out). Stage calls are counted on the
stage side ("run.done" log lines).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.image_meta import png_without_text
from stageflow.core.storage import LocalStore
from stageflow.orchestrator.store import open_job_store
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.conftest import log_events

STAGES = ("base", "refine", "upscale")
BATCH = 8
MAX_RUNNING_JOBS = 4  # so that half of a batch waits QUEUED for a slot
WAIT = 300  # seconds for the whole batch; it normally takes well under a minute
LEASE_SECONDS = 2  # PostgreSQL: how soon a restarted orchestrator may claim the dead one's jobs


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path, job_store_url: str
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("durable-cluster")
    with LocalCluster(
        state_dir=state,
        models_dir=fixture_models,
        torch_threads=1,
        orchestrator_args=[
            "--stage-cache",
            "false",
            "--max-running-jobs",
            str(MAX_RUNNING_JOBS),
            "--job-store-url",
            job_store_url,
            "--lease-seconds",
            str(LEASE_SECONDS),
        ],
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


def write_bundles(path: Path, *, seed: int, tail: str = "") -> Path:
    """BATCH bundle lines; `tail` (blank lines) changes the file's request ids, not its jobs."""
    path.write_text(
        "".join(
            json.dumps({"base": "a red circle", "style": "durability", "seed": seed + n,
                        "width": 32, "height": 32}) + "\n"
            for n in range(BATCH)
        ) + tail
    )  # fmt: skip
    return path


def start_batch(
    cluster: LocalCluster, bundles: Path, out: Path, summary: Path
) -> subprocess.Popen[bytes]:
    """The real CLI, as a user runs it; the test only polls it."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "stageflow.cli", "batch", str(bundles),
            "--concurrency", str(BATCH),
            "--address", cluster.orchestrator_address, "--out", str(out),
            "--summary", str(summary),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def finals_by_line(summary: Path) -> dict[int, bytes]:
    """Line number -> the final image the batch downloaded; every line must have succeeded."""
    rows = [json.loads(line) for line in summary.read_text().splitlines()]
    assert all(row["status"] == "succeeded" for row in rows), rows
    # Without the recipe each export adds (it names the job, which differs).
    return {
        int(row["line"]): png_without_text(Path(str(row["final_path"])).read_bytes())
        for row in rows
    }


def downloaded_sizes(rows: list[dict[str, object]]) -> list[int]:
    return [Path(str(row["final_path"])).stat().st_size for row in rows]


async def stored_jobs(job_store_url: str) -> list[pb.Job]:
    """The orchestrator's DB as it was left (read while the orchestrator is dead)."""
    store = await open_job_store(job_store_url)
    try:
        return await store.list_jobs(100)
    finally:
        await store.close()


async def test_orchestrator_killed_mid_batch_loses_and_duplicates_nothing(
    cluster: LocalCluster, tmp_path: Path, job_store_url: str
) -> None:
    before = {job.job_id for job in await stored_jobs(job_store_url)}
    bundles = write_bundles(tmp_path / "bundles.jsonl", seed=500)
    out, summary = tmp_path / "out", tmp_path / "summary.jsonl"
    batch = start_batch(cluster, bundles, out, summary)
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

        at_kill = await stored_jobs(job_store_url)
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
        listed = await client.list(page_size=100)
    jobs = [job for job in listed if job.job_id not in before]
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
    ours = sum(n for (job_id, _), n in calls.items() if job_id in {job.job_id for job in jobs})
    assert ours <= BATCH * len(STAGES) + MAX_RUNNING_JOBS  # at most one call per running job


async def test_sigterm_with_queued_jobs_loses_none_and_recomputes_nothing(
    cluster: LocalCluster, tmp_path: Path, job_store_url: str
) -> None:
    """SIGTERM with half the batch QUEUED: the orchestrator stops admitting, lets
    the stage calls in flight finish, leaves every job QUEUED or RUNNING; after
    the restart all complete, with the bytes of an undisturbed run."""
    reference_summary = tmp_path / "reference.jsonl"
    reference = start_batch(
        cluster, write_bundles(tmp_path / "a.jsonl", seed=900), tmp_path / "a", reference_summary
    )
    output, _ = await asyncio.to_thread(reference.communicate, timeout=WAIT)
    assert reference.returncode == 0, output.decode()
    expected = finals_by_line(reference_summary)
    before = {job.job_id for job in await stored_jobs(job_store_url)}

    # The same jobs again (other request ids: the file differs by a blank line).
    bundles = write_bundles(tmp_path / "b.jsonl", seed=900, tail="\n")
    summary = tmp_path / "summary.jsonl"
    batch = start_batch(cluster, bundles, tmp_path / "b", summary)
    try:
        deadline = time.monotonic() + WAIT
        async with StageflowClient(cluster.orchestrator_address) as client:
            while True:
                assert batch.poll() is None, batch.communicate()[0].decode()
                assert time.monotonic() < deadline, "the batch was never half queued"
                ours = [j for j in await client.list(page_size=100) if j.job_id not in before]
                queued = [j for j in ours if j.state == pb.JOB_STATE_QUEUED]
                if len(ours) == BATCH and len(queued) == BATCH - MAX_RUNNING_JOBS:
                    break
                await asyncio.sleep(0.05)
        orchestrator = cluster.process("orchestrator")
        orchestrator.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(orchestrator.wait, 30)
        assert rc == 0, "the orchestrator did not stop cleanly on SIGTERM"

        at_term = [job for job in await stored_jobs(job_store_url) if job.job_id not in before]
        states = sorted(pb.JobState.Name(job.state) for job in at_term)
        assert len(at_term) == BATCH
        assert pb.JOB_STATE_FAILED not in {job.state for job in at_term}, states
        # Nothing was admitted after SIGTERM: the queued half is still queued.
        assert states.count("JOB_STATE_QUEUED") == BATCH - MAX_RUNNING_JOBS, states

        cluster.restart("orchestrator")
        output, _ = await asyncio.to_thread(batch.communicate, timeout=WAIT)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 0, output.decode()
    assert finals_by_line(summary) == expected  # byte for byte, line by line

    async with StageflowClient(cluster.orchestrator_address) as client:
        jobs = [j for j in await client.list(page_size=100) if j.job_id not in before]
    assert len(jobs) == BATCH
    assert all(job.state == pb.JOB_STATE_SUCCEEDED for job in jobs)
    # The calls in flight at SIGTERM were let finish, not cut and run again.
    calls = done_calls(cluster)
    for job in jobs:
        for stage in STAGES:
            assert calls.get((job.job_id, stage), 0) == 1, f"{stage} of {job.job_id}"
    log = cluster.log_path("orchestrator").read_text()
    assert "internal error" not in log and "job.internal_error" not in log
