"""JobRunner against fake stages: ordering, hand-off, failure, cancel, resume, validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument, NotFound
from stageflow.orchestrator.bundle import DEFAULT_PIPELINE
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore, MemoryJobStore

S = orchestrator_pb2
WAIT = 5.0  # seconds; every wait below normally takes milliseconds


def _request(**kwargs: object) -> S.SubmitJobRequest:
    fields: dict[str, object] = {
        "bundle": S.PromptBundle(
            base="epic game hero portrait", style="moody cinematic", overlay_text="Chapter One"
        ),
        "seed": 42,
        "width": 64,
        "height": 64,
    }
    fields.update(kwargs)
    return S.SubmitJobRequest(**fields)  # type: ignore[arg-type]


def _fakes(**overrides: FakeStage) -> dict[str, FakeStage]:
    fakes = {name: FakeStage(name) for name in DEFAULT_PIPELINE}
    fakes.update(overrides)
    return fakes


@pytest.fixture(params=["sqlite", "memory"])
async def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    """The runner depends on the JobStore protocol only: each test runs over
    the SQLite store and over a store that is nothing but the protocol."""
    store: JobStore = (
        SqliteJobStore(tmp_path / "jobs.sqlite") if request.param == "sqlite" else MemoryJobStore()
    )
    yield store
    await store.close()


@pytest.fixture
async def runners(jobs: JobStore) -> AsyncIterator[list[JobRunner]]:
    """Runners made by a test; closed at its end so no task outlives it."""
    made: list[JobRunner] = []
    yield made
    for runner in made:
        await runner.close()


def _runner(
    runners: list[JobRunner],
    fakes: dict[str, FakeStage],
    jobs: JobStore,
    **settings: object,
) -> JobRunner:
    runner = JobRunner(fakes, jobs, FakeSettings(**settings), FakeStore())  # type: ignore[arg-type]
    runners.append(runner)
    return runner


async def _collect(events: AsyncIterator[S.WatchJobResponse]) -> list[S.WatchJobResponse]:
    async with asyncio.timeout(WAIT):
        return [event async for event in events]


def _describe(event: S.WatchJobResponse) -> str:
    kind = event.WhichOneof("event")
    if kind == "stage_started":
        return f"started {event.stage_started.stage}"
    if kind == "stage_progress":
        p = event.stage_progress
        return f"progress {p.stage} {p.step}/{p.total_steps}"
    if kind == "stage_finished":
        run = event.stage_finished.run
        return f"finished {run.stage} {S.StageState.Name(run.state)}"
    job = getattr(event, kind)  # snapshot / finished
    return f"{kind} {S.JobState.Name(job.state)}"


async def test_success_passes_outputs_downstream_and_streams_events_in_order(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes()
    runner = _runner(runners, fakes, jobs)
    job = await runner.submit(_request())
    assert job.state == S.JOB_STATE_QUEUED
    assert [(r.stage, r.state) for r in job.stages] == [
        (name, S.STAGE_STATE_PENDING) for name in DEFAULT_PIPELINE
    ]

    events = await _collect(runner.watch(job.job_id))

    expected = ["snapshot JOB_STATE_QUEUED"]
    for name in DEFAULT_PIPELINE:
        expected += [f"started {name}", *(f"progress {name} {i}/3" for i in (1, 2, 3))]
        expected.append(f"finished {name} STAGE_STATE_SUCCEEDED")
    expected.append("finished JOB_STATE_SUCCEEDED")
    assert [_describe(e) for e in events] == expected

    # Each stage read the previous stage's output key: only keys travel.
    assert not fakes["base"].calls[0].HasField("image")
    assert fakes["refine"].calls[0].image.key == fakes["base"].output_key(1)
    assert fakes["upscale"].calls[0].image.key == fakes["refine"].output_key(1)
    assert fakes["refine"].calls[0].image.sha256 == "sha-base-1"
    assert fakes["refine"].calls[0].refine.mode == stage_pb2.REFINE_MODE_INPAINT
    assert fakes["refine"].metadata[0] == [
        ("x-job-id", job.job_id),
        ("x-request-id", f"{job.job_id}.refine"),
    ]
    assert fakes["base"].timeouts == [30.0]

    final = events[-1].finished
    assert final.final.key == fakes["upscale"].output_key(1)
    assert final.final_url == "https://store.example/artifacts/upscale-1.png?expires=120"
    assert final.prompt.startswith("epic game hero portrait. Style: moody cinematic.")
    refine = final.stages[1]
    assert refine.model.name == "tiny-refine" and refine.timing.total_ms == 6.0
    assert refine.request == fakes["refine"].calls[0]  # the exact request sent
    assert (refine.step, refine.total_steps) == (3, 3)
    # What watchers saw is what was persisted.
    assert await jobs.get(job.job_id) == final
    assert await runner.get(job.job_id) == final


async def test_stage_failure_fails_the_job_naming_the_stage(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes(
        refine=FakeStage("refine", fail=("INVALID_ARGUMENT", "strength: must be in [0.01, 1]"))
    )
    runner = _runner(runners, fakes, jobs)
    job = await runner.submit(_request())
    events = await _collect(runner.watch(job.job_id))

    assert [_describe(e) for e in events][-2:] == [
        "finished refine STAGE_STATE_FAILED",
        "finished JOB_STATE_FAILED",
    ]
    final = events[-1].finished
    assert "refine" in final.error and "INVALID_ARGUMENT" in final.error
    states = [r.state for r in final.stages]
    assert states == [S.STAGE_STATE_SUCCEEDED, S.STAGE_STATE_FAILED, S.STAGE_STATE_PENDING]
    assert final.stages[1].error == "INVALID_ARGUMENT: strength: must be in [0.01, 1]"
    assert fakes["upscale"].calls == []
    assert not final.HasField("final") and final.final_url == ""


async def test_cancel_mid_stage_cancels_the_stage_call(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes(base=FakeStage("base", block_at=1))
    runner = _runner(runners, fakes, jobs)
    job = await runner.submit(_request())
    await asyncio.wait_for(fakes["base"].entered.wait(), WAIT)

    watch = runner.watch(job.job_id)
    snapshot = await watch.__anext__()  # subscribed from here on
    assert snapshot.snapshot.state == S.JOB_STATE_RUNNING
    assert snapshot.snapshot.stages[0].step == 1  # progress is visible before it is persisted

    cancelled = await asyncio.wait_for(runner.cancel(job.job_id), WAIT)

    assert fakes["base"].cancelled
    assert cancelled.state == S.JOB_STATE_CANCELLED
    assert [r.state for r in cancelled.stages] == [
        S.STAGE_STATE_CANCELLED,
        S.STAGE_STATE_PENDING,
        S.STAGE_STATE_PENDING,
    ]
    assert fakes["refine"].calls == []
    rest = await _collect(watch)
    assert [_describe(e) for e in rest] == [
        "finished base STAGE_STATE_CANCELLED",
        "finished JOB_STATE_CANCELLED",
    ]
    assert (await jobs.get(job.job_id)) == cancelled
    # Cancelling again changes nothing.
    assert await runner.cancel(job.job_id) == cancelled


async def _one_slot_taken(
    runners: list[JobRunner], jobs: JobStore
) -> tuple[dict[str, FakeStage], JobRunner, S.Job]:
    """A runner of one running job, whose first job holds that slot (its base
    call blocked until fakes["base"].release is set)."""
    fakes = _fakes(base=FakeStage("base", block_at=0))
    runner = _runner(runners, fakes, jobs, max_running_jobs=1)
    first = await runner.submit(_request())
    await asyncio.wait_for(fakes["base"].entered.wait(), WAIT)
    return fakes, runner, first


async def test_jobs_beyond_the_limit_wait_queued_and_can_be_cancelled(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes, runner, first = await _one_slot_taken(runners, jobs)
    second = await runner.submit(_request(seed=7))

    assert (await runner.get(second.job_id)).state == S.JOB_STATE_QUEUED
    cancelled = await asyncio.wait_for(runner.cancel(second.job_id), WAIT)
    assert cancelled.state == S.JOB_STATE_CANCELLED
    assert all(r.state == S.STAGE_STATE_PENDING for r in cancelled.stages)

    fakes["base"].release.set()
    events = await _collect(runner.watch(first.job_id))
    assert events[-1].finished.state == S.JOB_STATE_SUCCEEDED
    assert len(fakes["base"].calls) == 1  # the cancelled job never reached a stage


async def test_a_queued_job_reads_its_place_in_the_queue_in_dispatch_order(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes, runner, first = await _one_slot_taken(runners, jobs)
    bulk = await runner.submit(_request(seed=2, priority=S.PRIORITY_BULK))
    later_bulk = await runner.submit(_request(seed=3, priority=S.PRIORITY_BULK))
    interactive = await runner.submit(_request(seed=4))
    await asyncio.sleep(0.05)  # every task waits at the gate

    async def positions() -> list[int]:
        ids = [first.job_id, interactive.job_id, bulk.job_id, later_bulk.job_id]
        return [(await runner.get(job_id)).queue_position for job_id in ids]

    assert await positions() == [0, 1, 2, 3]  # interactive before bulk, as dispatched
    watch = runner.watch(bulk.job_id)
    snapshot = await anext(watch)
    await watch.aclose()  # type: ignore[attr-defined]
    assert snapshot.snapshot.queue_position == 2
    await asyncio.wait_for(runner.cancel(interactive.job_id), WAIT)
    assert await positions() == [0, 0, 1, 2]  # the queue moved up
    stored = await jobs.get(bulk.job_id)
    assert stored is not None and stored.queue_position == 0  # never stored

    fakes["base"].release.set()
    events = await _collect(runner.watch(later_bulk.job_id))
    assert events[-1].finished.state == S.JOB_STATE_SUCCEEDED
    assert events[-1].finished.queue_position == 0


async def test_restart_resumes_from_the_first_unfinished_stage(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    first_fakes = _fakes(refine=FakeStage("refine", block_at=1))
    first = _runner(runners, first_fakes, jobs)
    job = await first.submit(_request())
    await asyncio.wait_for(first_fakes["refine"].entered.wait(), WAIT)

    await first.close()  # a shutdown, not a cancel

    assert first_fakes["refine"].cancelled
    stored = await jobs.get(job.job_id)
    assert stored is not None and stored.state == S.JOB_STATE_RUNNING
    assert stored.stages[0].state == S.STAGE_STATE_SUCCEEDED

    second_fakes = _fakes()
    second = _runner(runners, second_fakes, jobs)
    await second.start()
    events = await _collect(second.watch(job.job_id))

    final = events[-1].finished
    assert final.state == S.JOB_STATE_SUCCEEDED
    assert len(second_fakes["base"].calls) == 0  # not recomputed
    assert len(second_fakes["refine"].calls) == 1
    assert len(second_fakes["upscale"].calls) == 1
    assert second_fakes["refine"].calls[0].image.key == first_fakes["base"].output_key(1)
    assert final.stages[0].output.key == first_fakes["base"].output_key(1)
    assert final.final.key == second_fakes["upscale"].output_key(1)


async def test_shutdown_with_queued_jobs_fails_none_and_the_next_start_runs_them(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    """SIGTERM with jobs waiting for a slot: every one stays QUEUED (or
    RUNNING) in the store, none FAILED, and the next process finishes all."""
    first_fakes = _fakes(base=FakeStage("base", block_at=1))
    first = _runner(runners, first_fakes, jobs, max_running_jobs=2)
    submitted = [await first.submit(_request(seed=n)) for n in range(6)]
    await asyncio.wait_for(first_fakes["base"].entered.wait(), WAIT)

    await first.drain(0.05)  # the blocked base calls outlive the grace
    await first.close()

    stored = [await jobs.get(job.job_id) for job in submitted]
    states = [job.state for job in stored if job is not None]
    assert states.count(S.JOB_STATE_RUNNING) == 2
    assert states.count(S.JOB_STATE_QUEUED) == 4
    second_fakes = _fakes()
    second = _runner(runners, second_fakes, jobs, max_running_jobs=2)
    await second.start()
    for job in submitted:
        events = await _collect(second.watch(job.job_id))
        assert events[-1].finished.state == S.JOB_STATE_SUCCEEDED, events[-1].finished.error
    assert len(second_fakes["base"].calls) == 6


async def test_drain_lets_the_call_in_flight_finish_and_starts_no_other(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes(base=FakeStage("base", block_at=1))
    runner = _runner(runners, fakes, jobs, max_running_jobs=1)
    job = await runner.submit(_request())
    queued = await runner.submit(_request(seed=7))
    await asyncio.wait_for(fakes["base"].entered.wait(), WAIT)
    watching = asyncio.create_task(_collect(runner.watch(job.job_id)))
    await asyncio.sleep(0.01)

    draining = asyncio.create_task(runner.drain(WAIT))
    await asyncio.sleep(0.01)
    assert not draining.done()
    fakes["base"].release.set()
    await asyncio.wait_for(draining, WAIT)

    events = await watching  # ended by the drain, without `finished`
    assert all(event.WhichOneof("event") != "finished" for event in events)
    stored = await jobs.get(job.job_id)
    assert stored is not None and stored.state == S.JOB_STATE_RUNNING
    assert stored.stages[0].state == S.STAGE_STATE_SUCCEEDED  # its output is kept
    assert fakes["refine"].calls == []  # no stage call started while draining
    assert len(fakes["base"].calls) == 1
    await runner.close()
    later = await jobs.get(queued.job_id)
    assert later is not None and later.state == S.JOB_STATE_QUEUED


async def test_a_bug_fails_the_job_with_a_message_that_holds_no_repr(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    class Broken(FakeStage):
        async def run(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            raise RuntimeError("<_io.BytesIO object at 0x7f00deadbeef> is not in deque")
            yield  # an async generator, as StageClient.run is

    runner = _runner(runners, _fakes(base=Broken("base")), jobs)
    job = await runner.submit(_request())
    events = await _collect(runner.watch(job.job_id))
    final = events[-1].finished
    assert final.state == S.JOB_STATE_FAILED
    assert "internal error (RuntimeError" in final.error
    assert "0x" not in final.error and "deque" not in final.error


async def test_submit_with_a_used_request_id_returns_the_first_job(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes()
    runner = _runner(runners, fakes, jobs)
    first = await runner.submit(_request(request_id="abc"))
    again = await runner.submit(_request(request_id="abc", seed=1))
    assert again.job_id == first.job_id
    await _collect(runner.watch(first.job_id))
    assert len(fakes["base"].calls) == 1
    assert len(await runner.list_jobs()) == 1


async def test_watch_of_a_finished_job_is_snapshot_then_finished(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    runner = _runner(runners, _fakes(), jobs)
    job = await runner.submit(_request())
    await _collect(runner.watch(job.job_id))
    events = await _collect(runner.watch(job.job_id))
    assert [_describe(e) for e in events] == [
        "snapshot JOB_STATE_SUCCEEDED",
        "finished JOB_STATE_SUCCEEDED",
    ]


async def test_unknown_jobs_are_not_found(jobs: JobStore, runners: list[JobRunner]) -> None:
    runner = _runner(runners, _fakes(), jobs)
    with pytest.raises(NotFound):
        await runner.get("job-nope")
    with pytest.raises(NotFound):
        await runner.cancel("job-nope")
    with pytest.raises(NotFound):
        await _collect(runner.watch("job-nope"))
    with pytest.raises(InvalidArgument, match="job_id"):
        await runner.get("")


async def test_list_jobs_filters_and_bounds_the_page(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes(refine=FakeStage("refine", fail=("INTERNAL", "boom")))
    runner = _runner(runners, fakes, jobs)
    a = await runner.submit(_request())
    await _collect(runner.watch(a.job_id))
    b = await runner.submit(_request())
    await _collect(runner.watch(b.job_id))
    assert [j.job_id for j in await runner.list_jobs()] == [b.job_id, a.job_id]
    assert len(await runner.list_jobs(state=S.JOB_STATE_FAILED)) == 2
    assert await runner.list_jobs(state=S.JOB_STATE_SUCCEEDED) == []
    for bad in (0, 1001):
        with pytest.raises(InvalidArgument, match="page_size"):
            await runner.list_jobs(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bundle": S.PromptBundle(base="  ", style="x")}, "bundle.base"),
        ({"width": 0}, "width"),
        ({"height": -64}, "height"),
        (
            {"refine": S.RefineOptions(mask_box=stage_pb2.Box(left=0.5, right=0.4, bottom=1))},
            "refine.mask_box",
        ),
    ],
)
async def test_malformed_requests_are_rejected_before_anything_is_stored(
    jobs: JobStore, runners: list[JobRunner], change: dict[str, object], field: str
) -> None:
    fakes = _fakes()
    runner = _runner(runners, fakes, jobs)
    with pytest.raises(InvalidArgument) as err:
        await runner.submit(_request(**change))
    assert err.value.field == field
    assert await runner.list_jobs() == []


def _stage_limits(*ranges: tuple[str, float, float]) -> stage_pb2.DescribeResponse:
    return stage_pb2.DescribeResponse(
        min_side=32,
        max_side=512,
        size_multiple=8,
        ready=True,
        params=[stage_pb2.ParamRange(name=n, min=lo, max=hi) for n, lo, hi in ranges],
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 1024}, "height", "[32, 512]"),
        ({"base": S.BaseOptions(steps=500)}, "base.steps", "[1, 100]"),
        ({"seed": -1}, "seed", "[0, 9223372036854775807] for the base stage, got -1"),
        ({"refine": S.RefineOptions(strength=1.5)}, "refine.strength", "[0.01, 1]"),
    ],
)
async def test_requests_outside_the_stages_published_limits_fail_at_submit(
    jobs: JobStore,
    runners: list[JobRunner],
    change: dict[str, object],
    field: str,
    message: str,
) -> None:
    fakes = _fakes(
        base=FakeStage("base", describe=_stage_limits(("steps", 1, 100), ("seed", 0, 2**63 - 1))),
        refine=FakeStage("refine", describe=_stage_limits(("strength", 0.01, 1.0))),
        # upscale is unreachable: its checks are left to the stage itself
    )
    runner = _runner(runners, fakes, jobs)
    with pytest.raises(InvalidArgument) as err:
        await runner.submit(_request(**change))
    assert err.value.field == field
    assert message in err.value.message
    assert await runner.list_jobs() == []
    assert fakes["base"].calls == []


async def test_describe_is_cached_and_an_unreachable_stage_does_not_block_submit(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    fakes = _fakes(base=FakeStage("base", describe=_stage_limits(("steps", 1, 100))))
    runner = _runner(runners, fakes, jobs)
    for _ in range(3):
        job = await runner.submit(_request())
        await _collect(runner.watch(job.job_id))
    assert fakes["base"].describe_calls == 1
    assert fakes["upscale"].describe_calls == 3  # failures are not cached
    assert len(fakes["upscale"].calls) == 3


def _refine_limits() -> stage_pb2.DescribeResponse:
    """A refine stage as the real one describes itself: ranges and defaults."""
    desc = _stage_limits(("strength", 0.01, 1.0), ("steps", 1, 200))
    desc.defaults["steps"] = 40
    return desc


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"bundle": S.PromptBundle(base="hero", overlay_text="two\nlines")},
            "bundle.overlay_text",
            "one line",
        ),
        (
            {"bundle": S.PromptBundle(base="hero", overlay_text="   ")},
            "bundle.overlay_text",
            "blank",
        ),
        (
            {"bundle": S.PromptBundle(base="hero", overlay_text="x" * 201)},
            "bundle.overlay_text",
            "200",
        ),
        ({"bundle": S.PromptBundle(base="b" * 1500, style="s" * 600)}, "bundle", "composed prompt"),
        (
            {"bundle": S.PromptBundle(base="b", negative_prompt="n" * 2001)},
            "bundle.negative_prompt",
            "2000",
        ),
        ({"refine": S.RefineOptions(strength=0.02)}, "refine.strength", "steps × strength"),
        ({"refine": S.RefineOptions(steps=2, strength=0.3)}, "refine.strength", "2 × 0.3"),
        ({"refine": S.RefineOptions(mode=42)}, "refine.mode", "unknown RefineMode value 42"),  # type: ignore[arg-type]
        (
            {"refine": S.RefineOptions(guidance_scale=float("nan"))},
            "refine.guidance_scale",
            "finite",
        ),
        ({"priority": -1}, "priority", "unknown Priority value -1"),
        ({"priority": 99}, "priority", "unknown Priority value 99"),
        ({"upscale": S.UpscaleOptions(mode=7)}, "upscale.mode", "UpscaleMode"),  # type: ignore[arg-type]
        ({"request_id": "r" * 5_000_000}, "request_id", "at most 128 characters"),
        ({"pipeline": "p" * 65}, "pipeline", "at most 64"),
        ({"stages": ["base"] * 25_000}, "stages", "at most 16 entries"),
        ({"deadline_seconds": float("inf")}, "deadline_seconds", "finite"),
    ],
)
async def test_stage_rules_apply_at_submit_before_anything_is_stored_or_run(
    jobs: JobStore,
    runners: list[JobRunner],
    change: dict[str, object],
    field: str,
    message: str,
) -> None:
    fakes = _fakes(refine=FakeStage("refine", describe=_refine_limits()))
    runner = _runner(runners, fakes, jobs)
    with pytest.raises(InvalidArgument) as err:
        await runner.submit(_request(**change))
    assert err.value.field == field
    assert message in err.value.message
    assert len(err.value.message) < 300  # never the caller's value itself
    assert await runner.list_jobs() == []
    assert fakes["base"].calls == []


async def test_the_kinds_limits_apply_even_when_the_stage_cannot_be_asked(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    runner = _runner(runners, _fakes(), jobs)  # no stage answers Describe
    for change, field in (
        ({"refine": S.RefineOptions(strength=0)}, "refine.strength"),
        ({"base": S.BaseOptions(steps=0)}, "base.steps"),
        ({"upscale": S.UpscaleOptions(tile_size=-4)}, "upscale.tile_size"),
    ):
        with pytest.raises(InvalidArgument) as err:
            await runner.submit(_request(**change))
        assert err.value.field == field
    assert await runner.list_jobs() == []


async def test_validation_is_linear_in_the_stage_list(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    import time

    runner = _runner(runners, _fakes(), jobs)
    # Within the maximum, every entry distinct is the old quadratic count's worst case.
    for stages in (["base"] * 16, ["base", "refine", "upscale"] * 5, ["blur"] * 50_000):
        started = time.perf_counter()
        with pytest.raises(InvalidArgument, match="stages"):
            await runner.submit(_request(stages=stages))
        assert time.perf_counter() - started < 0.1


async def test_long_ids_and_unknown_states_are_invalid_with_short_messages(
    jobs: JobStore, runners: list[JobRunner]
) -> None:
    runner = _runner(runners, _fakes(), jobs)
    with pytest.raises(InvalidArgument) as err:
        await runner.get("j" * 10_000)
    assert err.value.field == "job_id" and len(err.value.message) < 100
    with pytest.raises(NotFound) as missing:
        await runner.get("j" * 128)
    assert len(missing.value.message) < 100
    with pytest.raises(InvalidArgument, match="state"):
        await runner.list_jobs(state=77)  # type: ignore[arg-type]


async def test_a_page_of_jobs_fits_in_one_message(
    jobs: JobStore, runners: list[JobRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stageflow.orchestrator import runner as runner_module

    runner = _runner(runners, _fakes(), jobs)
    for _ in range(3):
        job = await runner.submit(_request(bundle=S.PromptBundle(base="b" * 1500)))
        await _collect(runner.watch(job.job_id))
    one = (await runner.list_jobs(1))[0].ByteSize()
    monkeypatch.setattr(runner_module, "MAX_PAGE_BYTES", one * 2 + 1)
    assert len(await runner.list_jobs()) == 2  # the third would pass the budget
