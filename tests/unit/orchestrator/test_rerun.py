"""Stage cache and reruns in the JobRunner, against fake stages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.bundle import DEFAULT_PIPELINE
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage

S = orchestrator_pb2
WAIT = 5.0


def _stage(name: str, **kwargs: object) -> FakeStage:
    model = common_pb2.ModelInfo(name=f"tiny-{name}", version="1", fingerprint=f"fp-{name}")
    return FakeStage(name, describe=stage_pb2.DescribeResponse(model=model, ready=True), **kwargs)  # type: ignore[arg-type]


def _request(**kwargs: object) -> S.SubmitJobRequest:
    fields: dict[str, object] = {
        "bundle": S.PromptBundle(base="hero", style="moody", overlay_text="Chapter One"),
        "seed": 42,
        "width": 64,
        "height": 64,
    }
    fields.update(kwargs)
    return S.SubmitJobRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def fakes() -> dict[str, FakeStage]:
    return {name: _stage(name) for name in DEFAULT_PIPELINE}


@pytest.fixture
async def runner(jobs: JobStore, fakes: dict[str, FakeStage]) -> AsyncIterator[JobRunner]:
    made = JobRunner(fakes, jobs, FakeSettings(stage_cache=True))
    yield made
    await made.close()


async def _finish(runner: JobRunner, job_id: str) -> list[S.WatchJobResponse]:
    async with asyncio.timeout(WAIT):
        return [event async for event in runner.watch(job_id)]


def _calls(fakes: dict[str, FakeStage]) -> dict[str, int]:
    return {name: len(fake.calls) for name, fake in fakes.items()}


async def test_an_identical_resubmission_calls_no_stage(
    runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    first = await runner.submit(_request(request_id="a"))
    done = (await _finish(runner, first.job_id))[-1].finished
    assert _calls(fakes) == {"base": 1, "refine": 1, "upscale": 1}
    assert [r.cache_hit for r in done.stages] == [False, False, False]
    assert all(len(r.cache_key) == 64 for r in done.stages)

    second = await runner.submit(_request(request_id="b"))
    assert second.job_id != first.job_id
    events = await _finish(runner, second.job_id)
    assert _calls(fakes) == {"base": 1, "refine": 1, "upscale": 1}  # zero new calls
    finished = [e.stage_finished.run for e in events if e.HasField("stage_finished")]
    assert [(r.stage, r.cache_hit) for r in finished] == [
        ("base", True),
        ("refine", True),
        ("upscale", True),
    ]
    again = events[-1].finished
    assert again.state == S.JOB_STATE_SUCCEEDED
    assert again.final == done.final
    assert [r.cache_key for r in again.stages] == [r.cache_key for r in done.stages]
    assert (await runner.get(second.job_id)).stages[2].cache_hit  # GetJob shows it


async def test_a_changed_parameter_misses_only_from_that_stage_on(
    runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    await _finish(runner, (await runner.submit(_request())).job_id)
    job = await runner.submit(_request(refine=S.RefineOptions(guidance_scale=9)))
    done = (await _finish(runner, job.job_id))[-1].finished
    assert [r.cache_hit for r in done.stages] == [True, False, False]
    assert _calls(fakes) == {"base": 1, "refine": 2, "upscale": 2}


async def test_with_the_cache_off_every_stage_is_called(
    jobs: JobStore, fakes: dict[str, FakeStage]
) -> None:
    runner = JobRunner(fakes, jobs, FakeSettings(stage_cache=False))
    try:
        for _ in range(2):
            await _finish(runner, (await runner.submit(_request())).job_id)
    finally:
        await runner.close()
    assert _calls(fakes) == {"base": 2, "refine": 2, "upscale": 2}


async def test_rerun_from_refine_reuses_base_and_keeps_version_one(
    runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    job = await runner.submit(_request())
    v1 = (await _finish(runner, job.job_id))[-1].finished
    assert v1.version == 1

    v2 = await runner.rerun(
        S.RerunJobRequest(
            job_id=job.job_id,
            from_stage="refine",
            refine=S.RefineOptions(guidance_scale=9),
            bundle=S.BundleOverrides(overlay_text="Chapter Two"),
        )
    )
    assert (v2.job_id, v2.version, v2.rerun_from) == (job.job_id, 2, "refine")
    assert v2.state == S.JOB_STATE_QUEUED
    done = (await _finish(runner, job.job_id))[-1].finished
    assert done.state == S.JOB_STATE_SUCCEEDED and done.version == 2

    assert _calls(fakes) == {"base": 1, "refine": 2, "upscale": 2}
    assert done.stages[0] == v1.stages[0]  # base: same parameters, same artifact
    refine = fakes["refine"].calls[1]
    assert refine.refine.guidance_scale == 9.0
    assert refine.refine.text == "Chapter Two"
    assert refine.image == v1.stages[0].output
    assert refine.request_id == f"{job.job_id}.v2.refine"
    assert done.final != v1.final
    assert done.bundle.overlay_text == "Chapter Two" and done.bundle.base == "hero"

    versions = await runner.versions(job.job_id)
    assert [v.version for v in versions] == [1, 2]
    assert versions[0] == v1  # version 1 intact
    assert versions[1] == await runner.get(job.job_id)


async def test_rerun_with_nothing_changed_is_all_cache_hits(
    runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    job = await runner.submit(_request())
    v1 = (await _finish(runner, job.job_id))[-1].finished
    await runner.rerun(S.RerunJobRequest(job_id=job.job_id, from_stage="refine"))
    done = (await _finish(runner, job.job_id))[-1].finished
    assert _calls(fakes) == {"base": 1, "refine": 1, "upscale": 1}
    assert done.final == v1.final and [r.cache_hit for r in done.stages[1:]] == [True, True]


async def test_rerun_refusals_name_the_problem(
    jobs: JobStore, runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    job = await runner.submit(_request())
    await _finish(runner, job.job_id)
    with pytest.raises(InvalidArgument) as err:
        await runner.rerun(S.RerunJobRequest(job_id=job.job_id, from_stage="blur"))
    assert err.value.field == "from_stage" and "base, refine, upscale" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        await runner.rerun(
            S.RerunJobRequest(job_id=job.job_id, from_stage="refine", base=S.BaseOptions(steps=3))
        )
    assert err.value.field == "base"
    with pytest.raises(InvalidArgument) as err:
        await runner.rerun(
            S.RerunJobRequest(
                job_id=job.job_id, from_stage="refine", bundle=S.BundleOverrides(base=" ")
            )
        )
    assert err.value.field == "bundle.base"
    assert len(await runner.versions(job.job_id)) == 1

    fakes["refine"].block_at = 1
    running = await runner.submit(_request(seed=7))
    async with asyncio.timeout(WAIT):
        await fakes["refine"].entered.wait()
    with pytest.raises(FailedPrecondition, match="still running"):
        await runner.rerun(S.RerunJobRequest(job_id=running.job_id, from_stage="upscale"))
    fakes["refine"].release.set()
    await _finish(runner, running.job_id)


async def test_rerun_applies_the_stage_rules_before_storing_a_version(
    jobs: JobStore, runner: JobRunner, fakes: dict[str, FakeStage]
) -> None:
    fakes["refine"].describe_response.defaults["steps"] = 40  # type: ignore[union-attr]
    job = await runner.submit(_request())
    await _finish(runner, job.job_id)
    calls = len(fakes["refine"].calls)
    for overrides, field in (
        ({"bundle": S.BundleOverrides(overlay_text="a\nb")}, "bundle.overlay_text"),
        ({"bundle": S.BundleOverrides(style="s" * 2000)}, "bundle"),
        ({"refine": S.RefineOptions(strength=0.01)}, "refine.strength"),
        ({"refine": S.RefineOptions(mode=42)}, "refine.mode"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidArgument) as err:
            await runner.rerun(
                S.RerunJobRequest(job_id=job.job_id, from_stage="refine", **overrides)
            )
        assert err.value.field == field
    assert len(await runner.versions(job.job_id)) == 1
    assert len(fakes["refine"].calls) == calls


async def test_versions_are_bounded_so_getjob_fits_in_one_message(
    jobs: JobStore, runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stageflow.core import limits

    monkeypatch.setattr(limits, "MAX_VERSIONS", 2)
    job = await runner.submit(_request())
    await _finish(runner, job.job_id)
    await runner.rerun(S.RerunJobRequest(job_id=job.job_id, from_stage="upscale"))
    await _finish(runner, job.job_id)
    with pytest.raises(FailedPrecondition, match="2 versions"):
        await runner.rerun(S.RerunJobRequest(job_id=job.job_id, from_stage="upscale"))
    assert len(await runner.versions(job.job_id)) == 2
