"""Two job runners as replicas over one real PostgreSQL, calling the session
cluster's real stage processes: a job submitted to one is run by whichever
claims it, watched and cancelled from the other, and a runner whose lease
was taken over stops without writing over the new owner.

The runners are in this process (the code under test is the runner's replica
path); the stages, the object store and the database are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator.leases import JobLeases
from stageflow.orchestrator.replicas import stage_client_for
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.stage_client import StageClient
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.test_cancel import stopped_steps, wait_for
from tests.unit.orchestrator.fakes import FakeSettings  # the runner's settings, plain

# The PostgreSQL job store (and its fixtures) come with the pgstore branch.
PostgresJobStore: Any = pytest.importorskip(
    "stageflow.orchestrator.postgres_store"
).PostgresJobStore

LEASE_SECONDS = 1.5
STEPS = 200  # a base run of seconds: long enough to watch, cancel and steal


@dataclass
class Replica:
    runner: JobRunner
    jobs: Any  # PostgresJobStore
    leases: JobLeases


@pytest.fixture
async def replicas(
    pg_url: str, local_cluster: LocalCluster, local_store: ObjectStore
) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    clients: list[StageClient] = []
    for name in ("a", "b"):
        jobs = await PostgresJobStore.open(pg_url)
        leases = JobLeases(jobs.pool, f"runner-{name}", LEASE_SECONDS)
        stages = {
            stage: stage_client_for(local_cluster.addresses[stage], wait_ready_seconds=30)
            for stage in ("base", "refine", "upscale")
        }
        clients.extend(stages.values())
        runner = JobRunner(stages, jobs, FakeSettings(), local_store, leases=leases)
        await runner.start()
        started.append(Replica(runner, jobs, leases))
    yield started
    for replica in started:
        await replica.runner.close()
        await replica.jobs.close()
    for client in clients:
        await client.close()


def request(seed: int, steps: int = STEPS) -> pb.SubmitJobRequest:
    out = pb.SubmitJobRequest(seed=seed, width=32, height=32, stages=["base"])
    out.bundle.base = "replicas"
    out.base.steps = steps
    return out


async def owner_of(replicas: list[Replica], job_id: str) -> tuple[Replica, Replica]:
    """(the replica running the job, the other one), once one has claimed it."""
    async with asyncio.timeout(30):
        while True:
            running = [r for r in replicas if job_id in r.runner._tasks]
            if running:
                [owner] = running
                [other] = [r for r in replicas if r is not owner]
                return owner, other
            await asyncio.sleep(0.02)


async def test_watch_and_cancel_on_one_replica_reach_the_job_the_other_runs(
    replicas: list[Replica], local_cluster: LocalCluster
) -> None:
    submitted = await replicas[0].runner.submit(request(seed=1))
    owner, other = await owner_of(replicas, submitted.job_id)

    # Watched where it does not run: the snapshot, then the owner's steps.
    events = other.runner.watch(submitted.job_id)
    first = await anext(events)
    assert first.HasField("snapshot")
    async with asyncio.timeout(60):
        async for event in events:
            if event.HasField("stage_progress") and event.stage_progress.step >= 2:
                seen = event.stage_progress.step
                break
    cancelled = await other.runner.cancel(submitted.job_id)
    rest = [event async for event in events]

    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert rest[-1].finished.state == pb.JOB_STATE_CANCELLED
    assert submitted.job_id not in owner.runner._tasks
    # The owner's stage call was cancelled between denoising steps.
    await wait_for(lambda: stopped_steps(local_cluster, "base", submitted.job_id))
    [(step, total)] = stopped_steps(local_cluster, "base", submitted.job_id)
    assert total == STEPS and seen <= step < STEPS


async def test_a_job_runs_once_and_its_watch_elsewhere_ends_with_the_result(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    submitted = await b.runner.submit(request(seed=2, steps=4))
    _, other = await owner_of(replicas, submitted.job_id)
    events = [event async for event in other.runner.watch(submitted.job_id)]
    assert events[-1].finished.state == pb.JOB_STATE_SUCCEEDED
    stored = await other.runner.get(submitted.job_id)
    assert stored.state == pb.JOB_STATE_SUCCEEDED
    assert stored.final.sha256 == events[-1].finished.final.sha256
    async with a.jobs.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT fence, done, owner FROM job_leases WHERE job_id = %s", (submitted.job_id,)
            )
        ).fetchone()
    assert row == (1, True, None)  # claimed once, ended, held by nobody


async def test_a_replica_whose_lease_was_taken_writes_nothing_over_the_new_owner(
    replicas: list[Replica],
) -> None:
    a = replicas[0]
    submitted = await a.runner.submit(request(seed=3))
    owner, _ = await owner_of(replicas, submitted.job_id)
    async with asyncio.timeout(30):
        while True:  # the base stage's call is under way
            stored = await owner.jobs.get(submitted.job_id)
            if stored is not None and stored.stages[0].state == pb.STAGE_STATE_RUNNING:
                break
            await asyncio.sleep(0.05)

    # The owner "pauses past its lease": another replica claims the job (the
    # claim's own statement, on a lease run out: the fence bumped) and
    # stores its own progress.
    async with a.jobs.pool.connection() as conn:
        row = await (
            await conn.execute(
                "UPDATE job_leases SET owner = 'thief', fence = fence + 1, "
                "lease_until = clock_timestamp() + interval '60 seconds' "
                "WHERE job_id = %s RETURNING fence",
                (submitted.job_id,),
            )
        ).fetchone()
    assert row == (2,)
    thief = JobLeases(a.jobs.pool, "thief", 60.0)
    progress = await a.jobs.get(submitted.job_id)
    assert progress is not None
    progress.error = "the new owner's progress"
    await thief.write(progress, 2)

    # The old owner finds out at its next renewal (a third of a lease) and
    # stops the job, its stage call cancelled, without another write.
    async with asyncio.timeout(LEASE_SECONDS * 3):
        while submitted.job_id in owner.runner._tasks:  # noqa: ASYNC110 (the runner's task)
            await asyncio.sleep(0.02)
    await asyncio.sleep(LEASE_SECONDS)  # anything it still wrote would be here now
    assert await a.jobs.get(submitted.job_id) == progress
    assert not await owner.leases.renew(submitted.job_id, 1)
