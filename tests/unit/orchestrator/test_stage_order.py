"""SubmitJobRequest.stages: validated at submit, run in the given order, text check kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.orchestrator.bundle import input_scales
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.validation import check_stages
from stageflow.v1 import orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore

S = orchestrator_pb2
WAIT = 5.0


def _request(stages: Sequence[str] = (), **kwargs: object) -> S.SubmitJobRequest:
    return S.SubmitJobRequest(
        bundle=S.PromptBundle(base="epic game hero portrait", overlay_text="Chapter One"),
        seed=42,
        width=64,
        height=64,
        stages=list(stages),
        **kwargs,  # type: ignore[arg-type]
    )


class TextCheckingStage(FakeStage):
    """A refine stage that reports an OCR check with its result."""

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        async for response in super().run(request, timeout=timeout, metadata=metadata):
            if response.WhichOneof("event") == "result":
                response.result.text_check.CopyFrom(
                    stage_pb2.TextCheck(
                        text="Chapter One",
                        ocr_text="Chapter One",
                        exact=True,
                        attempts=2,
                        attempt_cers=[0.25, 0.0],
                    )
                )
            yield response


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[tuple[JobRunner, dict[str, FakeStage]]]:
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite")
    fakes: dict[str, FakeStage] = {
        "base": FakeStage("base"),
        "refine": TextCheckingStage("refine"),
        "upscale": FakeStage("upscale"),
    }
    runner = JobRunner(fakes, jobs, FakeSettings(), FakeStore())
    yield runner, fakes
    await runner.close()
    await jobs.close()


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        (["base", "sharpen"], "unknown stage 'sharpen'"),
        (["base", "refine", "refine"], "refine twice"),
        (["upscale", "base"], "must start with base"),
        (["refine"], "must start with base"),
    ],
)
def test_bad_stage_orders_name_the_stages_field(stages: list[str], needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_stages(_request(stages))
    assert err.value.field == "stages"
    assert needle in err.value.message


@pytest.mark.parametrize(
    "stages", [[], ["base"], ["base", "upscale", "refine"], ["base", "refine", "upscale"]]
)
def test_good_stage_orders_pass(stages: list[str]) -> None:
    check_stages(_request(stages))


def test_each_stage_sees_the_size_its_input_has() -> None:
    assert input_scales(("base", "upscale", "refine")) == {"base": 1, "upscale": 1, "refine": 4}
    assert input_scales(("base", "refine", "upscale")) == {"base": 1, "refine": 1, "upscale": 1}


async def test_a_bad_order_is_rejected_before_anything_is_stored(
    runner: tuple[JobRunner, dict[str, FakeStage]],
) -> None:
    jobs_runner, fakes = runner
    with pytest.raises(InvalidArgument) as err:
        await jobs_runner.submit(_request(["base", "upscale", "upscale"]))
    assert err.value.field == "stages"
    assert await jobs_runner.list_jobs() == []
    assert all(not fake.calls for fake in fakes.values())


async def test_upscale_before_refine_runs_in_that_order_and_keeps_the_text_check(
    runner: tuple[JobRunner, dict[str, FakeStage]],
) -> None:
    jobs_runner, fakes = runner
    job = await jobs_runner.submit(_request(["base", "upscale", "refine"]))
    assert [r.stage for r in job.stages] == ["base", "upscale", "refine"]
    async with asyncio.timeout(WAIT):
        events = [e async for e in jobs_runner.watch(job.job_id)]
    started = [e.stage_started.stage for e in events if e.WhichOneof("event") == "stage_started"]
    assert started == ["base", "upscale", "refine"]

    # Each stage read the previous one's output; the final image is refine's.
    assert fakes["upscale"].calls[0].image.key == fakes["base"].output_key(1)
    assert fakes["refine"].calls[0].image.key == fakes["upscale"].output_key(1)
    assert fakes["refine"].calls[0].refine.text == "Chapter One"
    final = events[-1].finished
    assert final.state == S.JOB_STATE_SUCCEEDED
    assert final.final.key == fakes["refine"].output_key(1)
    refine = final.stages[2]
    assert refine.text_check.exact and refine.text_check.attempts == 2
    assert list(refine.text_check.attempt_cers) == [0.25, 0.0]
    assert not final.stages[0].HasField("text_check")


async def test_sizes_are_checked_at_each_stages_own_scale(
    runner: tuple[JobRunner, dict[str, FakeStage]],
) -> None:
    jobs_runner, fakes = runner
    # A refine stage that takes at most 128 px: fine before the upscale (64),
    # too small after it (256).
    fakes["refine"].describe_response = stage_pb2.DescribeResponse(
        kind="refine", min_side=8, max_side=128, size_multiple=8, ready=True
    )
    await jobs_runner.submit(_request(["base", "refine", "upscale"]))
    with pytest.raises(InvalidArgument) as err:
        await jobs_runner.submit(_request(["base", "upscale", "refine"]))
    assert err.value.field == "width"
    assert "256 (4 x 64)" in err.value.message and "refine" in err.value.message


async def test_a_stage_this_orchestrator_lacks_is_invalid(tmp_path: Path) -> None:
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite")
    fakes = {"base": FakeStage("base"), "upscale": FakeStage("upscale")}
    only_two = JobRunner(
        fakes,
        jobs,
        FakeSettings(),
        FakeStore(),
        pipeline=("base", "upscale"),
    )
    try:
        with pytest.raises(InvalidArgument) as err:
            await only_two.submit(_request(["base", "refine"]))
        assert err.value.field == "stages" and "refine" in err.value.message
        job = await only_two.submit(_request())  # the orchestrator's own default order
        assert [r.stage for r in job.stages] == ["base", "upscale"]
    finally:
        await only_two.close()
        await jobs.close()
