"""Three orchestrator replicas over one real PostgreSQL, as processes, calling
the session cluster's stage processes: one SIGKILLed or SIGSTOPped mid-batch,
every job still ends SUCCEEDED exactly once with the bytes of an undisturbed
run; a stage never has more calls in flight than its limit across replicas.
PostgreSQL restarted mid-batch: with three replicas nothing is lost or run
twice; a lone replica is NOT_SERVING while the database is away, SERVING
again after, and then finishes every job once (one whose lease ran out
meanwhile it claims again, its stale run stopped without a write).

Cheap jobs (the base stage only, 32x32, few steps): coordination is the
point. Replicas run with `--stage-cache false`, so every job really calls the
stage, and a short lease so take-over is quick.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient, Unavailable
from stageflow.serving.channels import client_channel
from stageflow.serving.processes import ServerProcess
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.conftest import log_events
from tests.pgserver import PostgresServer
from tests.replicas import Replicas, address

# The PostgreSQL job store (and its fixtures) come with the pgstore branch.
pytest.importorskip("stageflow.orchestrator.postgres_store")

LEASE_SECONDS = 2
JOBS = 16
WAIT = 300
STOP_STEPS = 120  # long enough that the paused replica is mid-stage
OUTAGE_STEPS = 60
OUTAGE_JOBS = 6


@pytest.fixture
async def replicas(
    pg_url: str, local_cluster: LocalCluster, tmp_path: Path
) -> AsyncIterator[Replicas]:
    group = Replicas(local_cluster, pg_url, tmp_path, lease_seconds=LEASE_SECONDS)
    yield group
    await asyncio.to_thread(group.stop)  # a test that paused one and failed: resumed first


def job(seed: int, steps: int = 12) -> dict[str, object]:
    return {
        "base": "replica chaos",
        "style": "",
        "seed": seed,
        "width": 32,
        "height": 32,
        "stages": ["base"],
        "base_options": {"steps": steps},
    }


async def run_batch(
    addresses: Sequence[str], tag: str, steps: int = 12, jobs: int = JOBS
) -> list[str]:
    """Submit `jobs` jobs round-robin over `addresses`; their ids, by seed."""
    ids = []
    for seed in range(jobs):
        async with StageflowClient(addresses[seed % len(addresses)]) as client:
            submitted = await client.submit(**job(seed, steps), request_id=f"{tag}-{seed}")  # type: ignore[arg-type]
            ids.append(submitted.job_id)
    return ids


async def finish(address: str, ids: Sequence[str]) -> list[pb.Job]:
    async with StageflowClient(address) as client:

        async def one(job_id: str) -> pb.Job:
            events = [event async for event in client.watch(job_id)]
            return events[-1].finished

        async with asyncio.timeout(WAIT):
            return list(await asyncio.gather(*map(one, ids)))


async def undisturbed(
    replicas: Replicas, proc: ServerProcess, steps: int = 12, jobs: int = JOBS
) -> list[str]:
    ids = await run_batch([address(proc)], "calm", steps, jobs)
    return [j.final.sha256 for j in await finish(address(proc), ids)]


async def test_a_replica_sigkilled_mid_batch_loses_no_job_and_runs_none_twice(
    replicas: Replicas,
) -> None:
    a, b, c = replicas.start(3)
    expected = await undisturbed(replicas, a)

    ids = await run_batch([address(p) for p in (a, b, c)], "kill")
    await asyncio.sleep(1.0)  # some jobs are mid-stage on every replica
    os.kill(b.pid, signal.SIGKILL)
    finished = await finish(address(a), ids)

    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * JOBS
    assert [j.final.sha256 for j in finished] == expected  # the same bytes
    succeeded = replicas.count("job.succeeded")
    assert all(len(succeeded[i]) == 1 for i in ids), succeeded  # stored as done once each
    claims = replicas.count("job.claimed")
    taken_over = [i for i in ids if len(claims[i]) > 1]
    # Only the dead replica's jobs were claimed again, each once more.
    assert all(len(claims[i]) == 2 and "orch1" in claims[i] for i in taken_over)


async def test_a_replica_paused_past_its_lease_writes_nothing_over_the_new_owner(
    replicas: Replicas,
) -> None:
    a, b, c = replicas.start(3)
    expected = await undisturbed(replicas, a, steps=STOP_STEPS)

    ids = await run_batch([address(p) for p in (a, b, c)], "stop", steps=STOP_STEPS)
    async with asyncio.timeout(60):  # pause it while it runs one of them
        while True:
            claimed, done = replicas.count("job.claimed"), replicas.count("job.succeeded")
            if any(b.name in claimed.get(i, []) and i not in done for i in ids):
                break
            await asyncio.sleep(0.02)
    os.kill(b.pid, signal.SIGSTOP)
    await asyncio.sleep(LEASE_SECONDS + 2.5)  # past its lease: the others take over
    os.kill(b.pid, signal.SIGCONT)
    finished = await finish(address(c), ids)

    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * JOBS
    assert [j.final.sha256 for j in finished] == expected
    claims = replicas.count("job.claimed")
    taken = [i for i in ids if len(claims[i]) > 1]
    assert taken, "the pause outlived the lease: some of its jobs were taken over"
    # The paused replica found out (a stale renewal or a refused write) and
    # stopped each taken job; none of them it stored as done.
    await asyncio.sleep(LEASE_SECONDS)
    stopped = replicas.count("job.stopped_lease_lost")
    assert sorted(stopped) == sorted(taken)
    succeeded = replicas.count("job.succeeded")
    assert all(succeeded[i] != ["orch1"] for i in taken)
    assert all(len(succeeded[i]) == 1 for i in ids)
    for stored in finished:  # the stored history is whole
        assert [r.state for r in stored.stages] == [pb.STAGE_STATE_SUCCEEDED]


def _peak_in_flight(cluster: LocalCluster, stage: str, ids: set[str]) -> int:
    """The most calls of these jobs the stage held at once, from each call's
    end time and its total time (admission to stored output)."""
    edges = []
    for event in log_events(cluster, stage):
        if event.get("event") == "run.done" and event.get("job_id") in ids:
            end = datetime.fromisoformat(str(event["timestamp"])).timestamp()
            start = end - float(event["total_ms"]) / 1000  # type: ignore[arg-type]
            edges += [(start, 1), (end, -1)]
    peak = now = 0
    for _, step in sorted(edges):
        now += step
        peak = max(peak, now)
    return peak


async def test_a_stage_limit_holds_across_replicas(
    replicas: Replicas, local_cluster: LocalCluster
) -> None:
    procs = replicas.start(3, ["--stage-limits", "base=2"])
    ids = await run_batch([address(p) for p in procs], "limit", steps=20)
    finished = await finish(address(procs[0]), ids)
    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * JOBS
    assert _peak_in_flight(local_cluster, "base", set(ids)) == 2  # reached, never passed


async def test_postgresql_restarted_mid_batch_loses_no_job_and_runs_none_twice(
    replicas: Replicas, pg_server: PostgresServer
) -> None:
    a, b, c = replicas.start(3)
    expected = await undisturbed(replicas, a, steps=STOP_STEPS)

    ids = await run_batch([address(p) for p in (a, b, c)], "restart", steps=STOP_STEPS)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(pg_server.restart, 2.0)  # down two seconds
    finished = await finish(address(a), ids)

    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * JOBS
    assert [j.final.sha256 for j in finished] == expected
    succeeded = replicas.count("job.succeeded")
    assert all(len(succeeded[i]) == 1 for i in ids), succeeded


async def _health_changes(address: str) -> AsyncGenerator[int, None]:
    """grpc.health.v1 Watch of the whole process: its status, then each change."""
    async with client_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        try:
            async for reply in watch:
                yield reply.status
        finally:
            watch.cancel()


def _base_calls(cluster: LocalCluster, ids: Sequence[str]) -> dict[str, int]:
    """job id -> base stage calls that ran to the end (the stage's log)."""
    calls = dict.fromkeys(ids, 0)
    for event in log_events(cluster, "base"):
        if event.get("event") == "run.done" and event.get("job_id") in calls:
            calls[str(event["job_id"])] += 1
    return calls


async def test_postgresql_away_a_lone_replica_is_not_serving_then_finishes_every_job_once(
    replicas: Replicas, pg_server: PostgresServer, local_cluster: LocalCluster
) -> None:
    [solo] = replicas.start(1)
    expected = await undisturbed(replicas, solo, steps=OUTAGE_STEPS, jobs=OUTAGE_JOBS)
    changes = _health_changes(address(solo))
    assert await anext(changes) == health_pb2.HealthCheckResponse.SERVING

    ids = await run_batch([address(solo)], "outage", steps=OUTAGE_STEPS, jobs=OUTAGE_JOBS)
    async with asyncio.timeout(60):  # mid-batch: a job in its stage call
        while not set(replicas.count("job.claimed")) - set(replicas.count("job.succeeded")):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await asyncio.to_thread(pg_server.stop)
    try:
        async with asyncio.timeout(30):
            assert await anext(changes) == health_pb2.HealthCheckResponse.NOT_SERVING
        async with StageflowClient(address(solo)) as client:
            with pytest.raises(Unavailable):  # calls that need the database say so
                await client.get(ids[0])
    finally:
        await asyncio.to_thread(pg_server.start)  # same port, same data
    async with asyncio.timeout(30):
        assert await anext(changes) == health_pb2.HealthCheckResponse.SERVING
    await changes.aclose()
    finished = await finish(address(solo), ids)

    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * OUTAGE_JOBS
    assert [j.final.sha256 for j in finished] == expected
    assert all(len(names) == 1 for names in replicas.count("job.succeeded").values())
    # A job whose lease ran out while the database was away was claimed again
    # by the replica itself (its stale run stopped first): its base call may
    # have been made twice, once to the end unseen. Every other job's once.
    claimed_again = {i for i, names in replicas.count("job.claimed").items() if len(names) > 1}
    calls = _base_calls(local_cluster, ids)
    assert all(calls[i] == 1 for i in ids if i not in claimed_again), calls
    assert all(1 <= calls[i] <= 2 for i in claimed_again), calls
