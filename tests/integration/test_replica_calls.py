"""Calls that reach a job through the replica that does not run it, over two
orchestrator processes on one real PostgreSQL and the session cluster's
stage processes: WatchJob streams every step the owner makes (the arrival
times of each step on both replicas are printed: the cross-replica latency),
CancelJob stops the owner's stage call between denoising steps, and two
RerunJob calls of one version at once make one new version, the other call
told FAILED_PRECONDITION (and its retry, once that version has finished, the
next one).

test_runner_leases.py covers watch and cancel with two runners in one
process; here they are separate processes, as deployed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import FailedPrecondition, StageflowClient
from stageflow.serving.processes import ServerProcess
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.test_cancel import stopped_steps, wait_for
from tests.integration.test_replica_chaos import Replicas, address, finish, job, replicas

__all__ = ["replicas"]  # the fixture, imported

WATCH_STEPS = 40
CANCEL_STEPS = 200  # seconds of base steps: long enough to cancel mid-run
RERUNS = 4  # rounds of two reruns at once: the race is hit in some of them
WAIT = 120

# (stage, step) -> monotonic arrival time, for one WatchJob stream.
Arrivals = dict[tuple[str, int], float]


async def _watch(address: str, job_id: str, arrivals: Arrivals) -> pb.Job:
    """Record when each progress step arrives; the `finished` job."""
    async with StageflowClient(address) as client:
        async for event in client.watch(job_id):
            if event.HasField("stage_progress"):
                progress = event.stage_progress
                arrivals.setdefault((progress.stage, progress.step), time.monotonic())
            if event.HasField("finished"):
                return event.finished
    raise AssertionError(f"the watch of {job_id} on {address} ended without `finished`")


def _owner(group: Replicas, job_id: str) -> str:
    [name] = group.count("job.claimed")[job_id]
    return name


def _by_name(procs: list[ServerProcess], name: str) -> tuple[ServerProcess, ServerProcess]:
    """(the process named `name`, the other one)."""
    [owner] = [p for p in procs if p.name == name]
    [other] = [p for p in procs if p.name != name]
    return owner, other


async def _submit(address: str, seed: int, steps: int, tag: str) -> str:
    async with StageflowClient(address) as client:
        submitted = await client.submit(**job(seed, steps), request_id=f"{tag}-{seed}")  # type: ignore[arg-type]
        return submitted.job_id


@pytest.fixture
async def pair(replicas: Replicas) -> AsyncIterator[tuple[Replicas, list[ServerProcess]]]:
    yield replicas, replicas.start(2)


async def test_a_watch_on_the_other_replica_streams_every_step_of_the_owner(
    pair: tuple[Replicas, list[ServerProcess]],
) -> None:
    group, procs = pair
    job_id = await _submit(address(procs[0]), seed=1, steps=WATCH_STEPS, tag="watch")
    seen: dict[str, Arrivals] = {p.name: {} for p in procs}
    async with asyncio.timeout(WAIT):
        finished = await asyncio.gather(*(_watch(address(p), job_id, seen[p.name]) for p in procs))
    assert [j.state for j in finished] == [pb.JOB_STATE_SUCCEEDED] * 2
    owner, other = _by_name(procs, _owner(group, job_id))
    mine, relayed = seen[owner.name], seen[other.name]

    # Every step after both streams had subscribed reached the other replica,
    # in one unbroken run to the last step.
    steps = sorted(step for _, step in relayed)
    assert steps == list(range(steps[0], WATCH_STEPS + 1)), steps
    both = sorted(set(mine) & set(relayed))
    assert set(mine) - set(relayed) <= {k for k in mine if k < both[0]}
    assert len(both) >= WATCH_STEPS // 2, "the watches started late: too few steps to compare"
    lags = [relayed[k] - mine[k] for k in both]
    print(
        f"\ncross-replica watch lag over {len(lags)} steps (other replica minus owner): "
        f"median {statistics.median(lags) * 1000:.1f} ms, "
        f"p95 {sorted(lags)[int(len(lags) * 0.95) - 1] * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms"
    )
    assert max(lags) < 5.0  # a sanity bound only: the figures are measurements


async def test_a_cancel_on_the_other_replica_stops_the_owners_stage_call_between_steps(
    pair: tuple[Replicas, list[ServerProcess]], local_cluster: LocalCluster
) -> None:
    group, procs = pair
    job_id = await _submit(address(procs[1]), seed=2, steps=CANCEL_STEPS, tag="cancel")
    async with asyncio.timeout(WAIT):
        while job_id not in group.count("job.claimed"):  # noqa: ASYNC110 (another process logs it)
            await asyncio.sleep(0.02)
    owner, other = _by_name(procs, _owner(group, job_id))
    mine: Arrivals = {}
    owner_watch = asyncio.create_task(_watch(address(owner), job_id, mine))
    async with StageflowClient(address(other)) as client, asyncio.timeout(WAIT):
        async for event in client.watch(job_id):
            if event.HasField("stage_progress") and event.stage_progress.step >= 3:
                break
        at_cancel = max(step for _, step in mine)  # the owner's latest step, as it streamed it
        cancelled = await client.cancel(job_id)
    async with asyncio.timeout(WAIT):
        ended = await owner_watch

    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert ended.state == pb.JOB_STATE_CANCELLED
    await wait_for(lambda: stopped_steps(local_cluster, "base", job_id))
    [(step, total)] = stopped_steps(local_cluster, "base", job_id)
    assert total == CANCEL_STEPS and at_cancel <= step < CANCEL_STEPS
    print(
        f"\ncross-replica cancel: the owner had streamed step {at_cancel}, "
        f"the stage stopped at step {step} of {total} ({step - at_cancel} steps later)"
    )
    assert step - at_cancel < CANCEL_STEPS // 4  # stopped mid-run, long before its end


async def _rerun(address: str, job_id: str, guidance: float) -> pb.Job | FailedPrecondition:
    async with StageflowClient(address) as client:
        try:
            return await client.rerun(job_id, "base", base_options={"guidance_scale": guidance})
        except FailedPrecondition as refused:
            return refused


async def _finish(address: str, job_id: str) -> pb.Job:
    [finished] = await finish(address, [job_id])
    return finished


async def test_two_reruns_of_one_version_on_two_replicas_make_one_new_version(
    pair: tuple[Replicas, list[ServerProcess]],
) -> None:
    _, (a, b) = pair
    ids = [await _submit(address(a), seed=10 + n, steps=4, tag="rerun") for n in range(RERUNS)]
    for job_id in ids:
        assert (await _finish(address(b), job_id)).state == pb.JOB_STATE_SUCCEEDED

    for job_id in ids:
        answers = await asyncio.gather(
            _rerun(address(a), job_id, 5.0), _rerun(address(b), job_id, 6.0)
        )
        made = [x for x in answers if isinstance(x, pb.Job)]
        refused = [x for x in answers if isinstance(x, FailedPrecondition)]
        # One new version; the other call is told why, never an internal error.
        assert [j.version for j in made] == [2], answers
        assert len(refused) == 1, answers
        v2 = await _finish(address(a), job_id)
        assert (v2.state, v2.version) == (pb.JOB_STATE_SUCCEEDED, 2)
        assert v2.request.base.guidance_scale == made[0].request.base.guidance_scale
        # The refused caller retries on the version that won: version 3.
        retried = await _rerun(address(b), job_id, 7.0)
        assert isinstance(retried, pb.Job) and retried.version == 3, retried
        v3 = await _finish(address(b), job_id)
        assert (v3.state, v3.version) == (pb.JOB_STATE_SUCCEEDED, 3)
        async with StageflowClient(address(b)) as client:
            versions = await client.versions(job_id)
        assert [v.version for v in versions] == [1, 2, 3]
        assert [v.request.base.guidance_scale for v in versions[1:]] == [
            v2.request.base.guidance_scale,
            7.0,
        ]
