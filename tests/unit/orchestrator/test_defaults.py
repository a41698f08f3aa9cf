"""Defaults the orchestrator does not own: unset options stay unset, the job's
size comes from the first stage's Describe, and the one `stages` setting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.settings import DEFAULT_STAGES, OrchestratorSettings, parse_stages
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore


def describe(**defaults: float) -> stage_pb2.DescribeResponse:
    return stage_pb2.DescribeResponse(
        kind="txt2img", min_side=16, max_side=256, size_multiple=16, defaults=defaults, ready=True
    )


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[tuple[JobRunner, dict[str, FakeStage]]]:
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite")
    stages = {
        "base": FakeStage("base", describe=describe(width=64, height=48, steps=20)),
        "upscale": FakeStage(
            "upscale", describe=stage_pb2.DescribeResponse(kind="upscale", min_side=1, max_side=128)
        ),
    }
    made = JobRunner(stages, jobs, FakeSettings(), FakeStore(), pipeline=("base", "upscale"))
    try:
        yield made, stages
    finally:
        await made.close()
        await jobs.close()


async def test_a_job_without_a_size_gets_the_base_models_and_sends_none(
    runner: tuple[JobRunner, dict[str, FakeStage]],
) -> None:
    jobs, stages = runner
    job = await jobs.submit(pb.SubmitJobRequest(bundle=pb.PromptBundle(base="hero"), seed=1))
    assert (job.width, job.height) == (64, 48)  # from Describe, before anything ran
    sent = job.stages[0].request.txt2img
    assert not sent.HasField("width") and not sent.HasField("steps")
    async with asyncio.timeout(10):
        events = [event async for event in jobs.watch(job.job_id)]
    finished = events[-1].finished
    assert finished.state == pb.JOB_STATE_SUCCEEDED, finished.error
    assert len(stages["upscale"].calls) == 1 and (finished.width, finished.height) == (64, 48)


async def test_the_model_default_size_is_checked_downstream(
    runner: tuple[JobRunner, dict[str, FakeStage]],
) -> None:
    jobs, stages = runner
    stages["base"].describe_response = describe(width=160, height=160)
    with pytest.raises(InvalidArgument) as err:
        await jobs.submit(pb.SubmitJobRequest(bundle=pb.PromptBundle(base="hero")))
    assert err.value.field == "width" and "for the upscale stage, got 160" in err.value.message


def test_the_stages_setting_takes_text_or_json_and_names_what_is_wrong() -> None:
    assert parse_stages("base=a:1, b:2; sharpen=c:3") == {
        "base": ["a:1", "b:2"],
        "sharpen": ["c:3"],
    }
    assert parse_stages('{"base": ["a:1"], "refine": "b:2"}') == {
        "base": ["a:1"],
        "refine": ["b:2"],
    }
    assert OrchestratorSettings.model_validate({"stages": "base=x:1"}).stages == {"base": ["x:1"]}
    assert set(DEFAULT_STAGES) == {"base", "refine", "upscale"}
    for bad, message in [("base", "NAME=HOST:PORT"), ("base=", "no address"), ("B=a:1", "'B'")]:
        with pytest.raises(ValueError, match=message):
            parse_stages(bad)
