"""The SQLite job store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.store import new_job_id
from stageflow.v1 import orchestrator_pb2

S = orchestrator_pb2


def _job(created_us: int, state: S.JobState = S.JOB_STATE_QUEUED) -> S.Job:
    ts = Timestamp()
    ts.FromMicroseconds(created_us)
    return S.Job(
        job_id=new_job_id(),
        state=state,
        bundle=S.PromptBundle(base="a castle"),
        stages=[S.StageRun(stage="base", state=S.STAGE_STATE_PENDING)],
        created_at=ts,
        updated_at=ts,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    jobs = SqliteJobStore(tmp_path / "db" / "jobs.sqlite")
    yield jobs
    await jobs.close()


async def test_round_trip_and_update_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    jobs = SqliteJobStore(path)
    job = _job(1_000)
    stored, created = await jobs.create(job)
    assert created and stored == job
    job.state = S.JOB_STATE_SUCCEEDED
    job.stages[0].state = S.STAGE_STATE_SUCCEEDED
    job.stages[0].output.key = "artifacts/x.png"
    await jobs.update(job)
    await jobs.close()

    reopened = SqliteJobStore(path)
    try:
        assert await reopened.get(job.job_id) == job
        assert await reopened.get("job-missing") is None
    finally:
        await reopened.close()


async def test_same_request_id_returns_the_first_job(store: SqliteJobStore) -> None:
    first, created = await store.create(_job(1), "req-1")
    assert created
    again, created_again = await store.create(_job(2), "req-1")
    assert not created_again and again.job_id == first.job_id
    # Empty keys are not keys: every such job is new.
    _, a = await store.create(_job(3), "")
    _, b = await store.create(_job(4), "")
    assert a and b
    assert len(await store.list_jobs(10)) == 3


async def test_list_is_newest_first_with_a_state_filter_and_a_limit(store: SqliteJobStore) -> None:
    old = _job(1_000, S.JOB_STATE_SUCCEEDED)
    mid = _job(2_000, S.JOB_STATE_RUNNING)
    new = _job(3_000, S.JOB_STATE_SUCCEEDED)
    for job in (mid, new, old):
        await store.create(job)
    assert [j.job_id for j in await store.list_jobs(10)] == [new.job_id, mid.job_id, old.job_id]
    assert [j.job_id for j in await store.list_jobs(1)] == [new.job_id]
    done = await store.list_jobs(10, S.JOB_STATE_SUCCEEDED)
    assert [j.job_id for j in done] == [new.job_id, old.job_id]


async def test_unfinished_lists_queued_and_running_oldest_first(store: SqliteJobStore) -> None:
    running = _job(2_000, S.JOB_STATE_RUNNING)
    queued = _job(1_000, S.JOB_STATE_QUEUED)
    for job in (running, queued, _job(500, S.JOB_STATE_FAILED)):
        await store.create(job)
    assert [j.job_id for j in await store.unfinished()] == [queued.job_id, running.job_id]


async def test_updating_a_missing_job_raises(store: SqliteJobStore) -> None:
    with pytest.raises(KeyError):
        await store.update(_job(1))


def test_job_ids_are_unique_and_prefixed() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("job-") for i in ids)
