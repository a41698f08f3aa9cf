"""The claim loop of several replicas over a real PostgreSQL server: every job
runs once, a dead replica's jobs are taken over, a drained one's at once,
and a cancel asked on one replica reaches the job's owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stageflow.orchestrator.claims import ClaimLoop
from stageflow.orchestrator.leases import Claim, JobLeases
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.leasedb import Replicas, insert, job, replicas, stored

__all__ = ["replicas"]  # the fixture, imported


class Replica:
    """A ClaimLoop whose jobs each write RUNNING, wait `work` seconds (or until
    stopped), then write SUCCEEDED: what the runner does, minus the stages."""

    def __init__(self, leases: JobLeases, url: str, max_running: int, work: float) -> None:
        self.leases = leases
        self.work = work
        self.started: list[Claim] = []
        self.lost: list[str] = []
        self.cancels: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.loop = ClaimLoop(
            leases,
            url,
            max_running=max_running,
            start=self._start,
            on_lost=self.lost.append,
            on_cancel=self.cancels.append,
        )

    async def _start(self, claim: Claim) -> None:
        self.started.append(claim)
        self.tasks[claim.job_id] = asyncio.create_task(self._run(claim))

    async def _run(self, claim: Claim) -> None:
        current = await stored(self.leases, claim.job_id)
        current.state = pb.JOB_STATE_RUNNING
        await self.leases.write(current, claim.fence)
        await asyncio.sleep(self.work)
        current.state = pb.JOB_STATE_SUCCEEDED
        await self.leases.write(current, claim.fence, final=True)
        self.loop.finished(claim.job_id)

    def die(self) -> None:
        """Stop everything without a word to the database (SIGKILL)."""
        for task in [*self.loop._tasks, *self.tasks.values()]:
            task.cancel()
        for _, keeper in self.loop._keepers.values():
            keeper.cancel()


# make(n, max_running=, work=, lease=): n replicas
Group = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def group(replicas: Replicas, pg_url: str) -> AsyncIterator[Group]:
    made: list[Replica] = []

    async def make(n: int, *, max_running: int, work: float, lease: float = 1.0) -> list[Replica]:
        for leases in await replicas(n, lease):
            made.append(Replica(leases, pg_url, max_running, work))
        return made[-n:]

    yield make
    for replica in made:
        replica.die()


async def until(predicate: Callable[[], object], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 (the database and other tasks decide)
            await asyncio.sleep(0.02)


async def test_three_replicas_run_every_job_once_within_the_global_limit(group: Group) -> None:
    a, b, c = await group(3, max_running=4, work=0.2)
    await insert(a.leases, [job(f"j{n:02}", n) for n in range(16)])
    peak = 0

    async def watch_running() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await a.leases.running())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(watch_running())
    for replica in (a, b, c):
        replica.loop.start()
    try:
        await until(lambda: sum(len(r.started) for r in (a, b, c)) == 16)
        await until(lambda: all(t.done() for r in (a, b, c) for t in r.tasks.values()))
    finally:
        sampler.cancel()
    claimed = [cl.job_id for r in (a, b, c) for cl in r.started]
    assert sorted(claimed) == [f"j{n:02}" for n in range(16)]  # each exactly once
    assert 1 <= peak <= 4
    assert sum(bool(r.started) for r in (a, b, c)) >= 2  # the work was shared
    for n in range(16):
        assert (await stored(a.leases, f"j{n:02}")).state == pb.JOB_STATE_SUCCEEDED


async def test_a_dead_replicas_job_is_taken_over_with_a_new_fence(group: Group) -> None:
    a, b = await group(2, max_running=4, work=3600)
    await insert(a.leases, [job("j", 1)])
    a.loop.start()
    await until(lambda: a.started)
    a.die()
    b.loop.start()
    await until(lambda: b.started)  # once a's lease ran out
    assert b.started[0].job_id == "j" and b.started[0].fence == a.started[0].fence + 1


async def test_a_drained_replica_gives_its_jobs_back_at_once(group: Group) -> None:
    # A lease of an hour: only the release can explain the take-over.
    a, b = await group(2, max_running=4, work=3600, lease=3600)
    await insert(a.leases, [job("j1", 1), job("j2", 2)])
    a.loop.start()
    await until(lambda: len(a.started) == 2)
    b.loop.start()
    await asyncio.sleep(0.5)
    assert not b.started  # held by a
    for task in a.tasks.values():
        task.cancel()
    await a.loop.drain()
    await until(lambda: len(b.started) == 2)
    assert {cl.job_id for cl in b.started} == {"j1", "j2"}


async def test_a_cancel_asked_on_one_replica_reaches_the_owner(group: Group) -> None:
    a, b = await group(2, max_running=4, work=3600)
    await insert(a.leases, [job("j", 1)])
    a.loop.start()
    b.loop.start()
    await until(lambda: a.started or b.started)
    owner, other = (a, b) if a.started else (b, a)
    assert await other.leases.request_cancel("j")
    await until(lambda: "j" in owner.cancels)
