"""Stage admission: per-stage limits and the interactive/bulk lanes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.scheduler import PriorityGate, StageScheduler, parse_limits
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import orchestrator_pb2 as S
from stageflow.v1 import stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore

WAIT = 5.0
BULK = S.PRIORITY_BULK
INTERACTIVE = S.PRIORITY_INTERACTIVE


class CountingStage(FakeStage):
    """Counts calls in flight; each call sleeps a little so they overlap."""

    def __init__(self, name: str) -> None:
        super().__init__(name, steps=2)
        self.in_flight = 0
        self.peak = 0

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            async for response in super().run(request, timeout=timeout, metadata=metadata):
                yield response
        finally:
            self.in_flight -= 1


def _request(seed: int, priority: int = S.PRIORITY_UNSPECIFIED) -> S.SubmitJobRequest:
    return S.SubmitJobRequest(
        bundle=S.PromptBundle(base="hero", style="cinematic"),
        seed=seed,
        width=64,
        height=64,
        stages=["base"],
        priority=priority,  # type: ignore[arg-type]
    )


async def _wait_done(runner: JobRunner, job_ids: list[str]) -> None:
    """Wait until every job ended; each must have succeeded."""
    async with asyncio.timeout(WAIT):
        for job_id in job_ids:
            events = [event async for event in runner.watch(job_id)]
            assert events[-1].finished.state == S.JOB_STATE_SUCCEEDED, events[-1]


def _job_order(stage: FakeStage) -> list[str]:
    return [dict(md)["x-job-id"] for md in stage.metadata]


async def test_interactive_call_is_admitted_before_an_earlier_bulk_one(
    jobs: JobStore,
) -> None:
    base = FakeStage("base", block_at=1)
    runner = JobRunner(
        {"base": base},
        jobs,
        FakeSettings(),
        FakeStore(),
        pipeline=("base",),
        stage_limits={"base": 1},
    )
    try:
        first = await runner.submit(_request(1))
        async with asyncio.timeout(WAIT):
            await base.entered.wait()  # `first` holds the only base slot
        bulk = await runner.submit(_request(2, BULK))
        await asyncio.sleep(0.05)  # the bulk call is queued first
        interactive = await runner.submit(_request(3, INTERACTIVE))
        await asyncio.sleep(0.05)
        assert len(base.calls) == 1  # both wait in the orchestrator, not at the stage
        base.release.set()
        await _wait_done(runner, [first.job_id, bulk.job_id, interactive.job_id])
    finally:
        await runner.close()
    assert _job_order(base) == [first.job_id, interactive.job_id, bulk.job_id]


async def test_stage_limit_caps_calls_in_flight(jobs: JobStore) -> None:
    base = CountingStage("base")
    runner = JobRunner(
        {"base": base},
        jobs,
        FakeSettings(max_running_jobs=8),
        FakeStore(),
        pipeline=("base",),
        stage_limits={"base": 2},
    )
    try:
        submitted = [await runner.submit(_request(seed)) for seed in range(8)]
        await _wait_done(runner, [job.job_id for job in submitted])
    finally:
        await runner.close()
    assert len(base.calls) == 8
    assert base.peak == 2  # reached, never exceeded


async def test_limit_comes_from_describe_capacity() -> None:
    def describe(stage: str) -> stage_pb2.DescribeResponse | None:
        return stage_pb2.DescribeResponse(max_concurrency=2, max_queue=1)

    scheduler = StageScheduler(describe)
    peak = 0

    async def call() -> None:
        nonlocal peak
        async with scheduler.slot("upscale", BULK):
            peak = max(peak, scheduler.running("upscale"))
            await asyncio.sleep(0.01)

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(call() for _ in range(10)))
    assert peak == 3  # max_concurrency + max_queue
    assert scheduler.running("upscale") == 0


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    gate = PriorityGate(1)
    order: list[str] = []

    async def call(name: str, priority: int) -> None:
        async with gate.hold(priority):
            order.append(name)

    await gate.acquire(INTERACTIVE)
    doomed = asyncio.create_task(call("doomed", INTERACTIVE))
    bulk = asyncio.create_task(call("bulk", BULK))
    await asyncio.sleep(0)
    doomed.cancel()
    gate.release()
    async with asyncio.timeout(WAIT):
        await bulk
    assert order == ["bulk"]
    assert gate.running == 0


async def test_position_counts_waiters_in_the_order_they_are_granted() -> None:
    gate = PriorityGate(1)
    await gate.acquire(INTERACTIVE, "running")

    async def wait(key: str, priority: int) -> None:
        async with gate.hold(priority, key):
            await asyncio.Event().wait()  # hold until cancelled

    tasks = [
        asyncio.create_task(wait(key, priority))
        for key, priority in (("b1", BULK), ("i1", INTERACTIVE), ("b2", BULK))
    ]
    await asyncio.sleep(0)
    assert [gate.position(k) for k in ("running", "i1", "b1", "b2", "nobody")] == [0, 1, 2, 3, 0]
    gate.release()  # i1 takes the slot
    await asyncio.sleep(0)
    assert [gate.position(k) for k in ("i1", "b1", "b2")] == [0, 1, 2]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.position("b2") == 0


async def test_waiters_cancelled_all_at_once_leave_the_gate_clean() -> None:
    """A shutdown cancels every job task at once: the holder's release drops
    the waiters' cancelled futures before their own handlers run, which must
    not turn their cancellation into an error (`... is not in deque`)."""
    gate = PriorityGate(1)

    async def hold(priority: int) -> None:
        async with gate.hold(priority):
            await asyncio.Event().wait()

    tasks = [asyncio.create_task(hold(p)) for p in (INTERACTIVE, INTERACTIVE, BULK, BULK)]
    await asyncio.sleep(0)
    assert gate.running == 1
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert gate.running == 0
    assert not any(gate.lanes.values())


async def test_closed_scheduler_admits_nothing_and_waits_for_calls_in_flight() -> None:
    scheduler = StageScheduler(lambda _: None, {"base": 2})
    release = asyncio.Event()
    admitted: list[int] = []

    async def call(n: int, stage: str = "base") -> None:
        async with scheduler.slot(stage, INTERACTIVE):
            admitted.append(n)
            await release.wait()

    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    closing = asyncio.create_task(scheduler.close())
    late = [asyncio.create_task(call(n)) for n in (2, 3)]
    other = asyncio.create_task(call(4, "refine"))  # a gate made after close is closed
    await asyncio.sleep(0.01)
    assert not closing.done()  # the call in flight still runs
    release.set()
    async with asyncio.timeout(WAIT):
        await closing
        await first
    await asyncio.sleep(0.01)
    assert admitted == [1]  # a free slot was not granted after close
    for task in [*late, other]:
        task.cancel()
    await asyncio.gather(*late, other, return_exceptions=True)
    assert scheduler.running("base") == 0


def test_parse_limits() -> None:
    assert parse_limits("base=2, upscale=1") == {"base": 2, "upscale": 1}
    assert parse_limits("") == {}
    with pytest.raises(ValueError, match="'base=0'"):
        parse_limits("base=0")
