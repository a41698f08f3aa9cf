"""The runner's stage calls: fallback routes from the spec, job deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.orchestrator.replicas import RetryPolicy, StageCaller
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.spec import SpecError, load_specs, parse_spec, with_fallback
from stageflow.orchestrator.stage_client import StageCallError
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore

S = orchestrator_pb2
WAIT = 5.0
SPEC = """\
stages:
  - stage: base
  - stage: upscale
    defaults: {mode: learned, tile_size: 128}
    fallback:
      defaults: {mode: lanczos, tile_size: 64}
"""


class OutOfMemory(FakeStage):
    """An upscale stage whose learned mode always runs out of memory."""

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        if request.upscale.mode != stage_pb2.UPSCALE_MODE_LANCZOS:
            self.calls.append(request)
            raise StageCallError("RESOURCE_EXHAUSTED", "CUDA out of memory")
            yield  # pragma: no cover -- makes this an async generator
        async for response in super().run(request, timeout=timeout, metadata=metadata):
            yield response


async def _no_sleep(_: float) -> None:
    pass


def _request(**kwargs: object) -> S.SubmitJobRequest:
    fields: dict[str, object] = {
        "bundle": S.PromptBundle(base="a hero"),
        "seed": 7,
        "width": 64,
        "height": 64,
    }
    fields.update(kwargs)
    return S.SubmitJobRequest(**fields)  # type: ignore[arg-type]


async def _finished(runner: JobRunner, job_id: str) -> S.Job:
    async with asyncio.timeout(WAIT):
        async for event in runner.watch(job_id):
            if event.WhichOneof("event") == "finished":
                return event.finished
    raise AssertionError("no finished event")


def test_a_fallback_is_parsed_and_its_defaults_win_over_the_job(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(SPEC)
    spec = load_specs(tmp_path)["default"]
    upscale = spec.stage("upscale")
    assert upscale is not None and upscale.fallback_service == "upscale"
    request = _request(upscale=S.UpscaleOptions(tile_size=256, tile_overlap=8))
    effective = with_fallback(request, spec, "upscale")
    assert effective is not None
    assert effective.upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
    assert effective.upscale.tile_size == 64  # the fallback's, over the job's 256
    assert effective.upscale.tile_overlap == 8  # the job's, untouched by the fallback
    assert with_fallback(request, spec, "base") is None


def test_a_bad_fallback_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - stage: base\n    fallback: {defaults: {tile_size: 64}}\n")
    with pytest.raises(SpecError, match=r"stages\.0\.base\.fallback\.defaults\.tile_size"):
        parse_spec(path)


async def test_resource_exhausted_takes_the_fallback_and_the_run_records_it(
    tmp_path: Path, jobs: JobStore
) -> None:
    (tmp_path / "default.yaml").write_text(SPEC)
    fakes = {"base": FakeStage("base"), "upscale": OutOfMemory("upscale")}
    caller = StageCaller(RetryPolicy(exhausted_max_attempts=2), sleep=_no_sleep)
    runner = JobRunner(
        fakes, jobs, FakeSettings(), FakeStore(), specs=load_specs(tmp_path), caller=caller
    )
    try:
        job = await runner.submit(_request())
        done = await _finished(runner, job.job_id)
    finally:
        await runner.close()
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    base, upscale = done.stages
    assert (base.route, base.attempts) == ("primary", 1)
    assert (upscale.route, upscale.attempts) == ("fallback", 3)
    # The run shows what produced its output: the fallback's parameters.
    assert upscale.request.upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
    assert upscale.request.upscale.tile_size == 64
    assert upscale.request.image.key == base.output.key
    assert done.final.key == upscale.output.key


async def test_without_a_fallback_resource_exhausted_fails_the_job(
    tmp_path: Path, jobs: JobStore
) -> None:
    (tmp_path / "default.yaml").write_text("stages:\n  - stage: base\n  - stage: upscale\n")
    fakes = {"base": FakeStage("base"), "upscale": OutOfMemory("upscale")}
    caller = StageCaller(RetryPolicy(exhausted_max_attempts=2), sleep=_no_sleep)
    runner = JobRunner(fakes, jobs, FakeSettings(), specs=load_specs(tmp_path), caller=caller)
    try:
        done = await _finished(runner, (await runner.submit(_request())).job_id)
    finally:
        await runner.close()
    assert done.state == S.JOB_STATE_FAILED
    assert "RESOURCE_EXHAUSTED" in done.error
    assert done.stages[1].attempts == 2


async def test_stage_calls_get_the_time_left_of_the_job(jobs: JobStore) -> None:
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    runner = JobRunner(fakes, jobs, FakeSettings(stage_timeout_seconds=30.0), FakeStore())
    try:
        done = await _finished(runner, (await runner.submit(_request(deadline_seconds=5))).job_id)
        assert done.state == S.JOB_STATE_SUCCEEDED
        timeout = fakes["base"].timeouts[0]
        assert timeout is not None and 4.0 < timeout <= 5.0
        done = await _finished(runner, (await runner.submit(_request())).job_id)
        assert fakes["base"].timeouts[1] == 30.0
        with pytest.raises(InvalidArgument, match="deadline_seconds"):
            await runner.submit(_request(deadline_seconds=0))
    finally:
        await runner.close()


async def test_a_job_past_its_deadline_fails_with_deadline_exceeded(jobs: JobStore) -> None:
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    fakes["base"].block_at = 1  # holds the base call until the job's time is up
    runner = JobRunner(fakes, jobs, FakeSettings(), FakeStore())
    try:
        job = await runner.submit(_request(deadline_seconds=0.2))
        await fakes["base"].entered.wait()
        await asyncio.sleep(0.3)  # past the deadline; the fake ignores its own
        fakes["base"].release.set()
        done = await _finished(runner, job.job_id)
    finally:
        await runner.close()
    assert done.state == S.JOB_STATE_FAILED
    assert "DEADLINE_EXCEEDED" in done.error
    assert done.stages[1].state == S.STAGE_STATE_FAILED and fakes["refine"].calls == []
