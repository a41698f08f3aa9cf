"""Cancellation and deadlines reach the running model: it stops between two
denoising steps, and the stage is free for the next call."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import grpc
import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.serving.channels import client_channel
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2, stage_pb2_grpc
from tests.integration.conftest import log_events

STEPS = 200  # the longest run a request may ask for: seconds on the fixture


def stopped_steps(cluster: LocalCluster, stage: str, job_id: str) -> list[tuple[int, int]]:
    """(step, total) of every run of this job the stage logged as cancelled."""
    found = []
    for event in log_events(cluster, stage):
        if event.get("event") == "run.stopped" and event.get("job_id") == job_id:
            match = re.search(r"cancelled at step (\d+) of (\d+)", str(event.get("detail")))
            if match:
                found.append((int(match[1]), int(match[2])))
    return found


def finished_runs(cluster: LocalCluster, stage: str, job_id: str) -> int:
    return sum(
        1
        for event in log_events(cluster, stage)
        if event.get("event") == "run.done" and event.get("job_id") == job_id
    )


async def wait_for(predicate: Callable[[], object]) -> None:
    """Poll a condition the processes make true (a log line), for up to 30 s."""
    async with asyncio.timeout(30):
        while not predicate():  # noqa: ASYNC110 (another process writes the log)
            await asyncio.sleep(0.05)


async def test_cancel_job_mid_denoise_stops_the_stage_between_steps(
    local_cluster: LocalCluster, orchestrator: str
) -> None:
    """Over each job store (the `orchestrator` fixture)."""
    async with StageflowClient(orchestrator) as client:
        job = await client.submit(
            base="a slow job", style="", seed=1, base_options={"steps": STEPS}
        )
        seen_step = 0
        events = client.watch(job.job_id)
        async for event in events:
            if event.HasField("stage_progress") and event.stage_progress.step >= 2:
                seen_step = event.stage_progress.step
                cancelled = await client.cancel(job.job_id)
                break
        rest = [event async for event in events]
        final = await client.get(job.job_id)

    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert rest[-1].HasField("finished")
    assert final.state == pb.JOB_STATE_CANCELLED
    assert [run.state for run in final.stages] == [
        pb.STAGE_STATE_CANCELLED,
        pb.STAGE_STATE_PENDING,
        pb.STAGE_STATE_PENDING,
    ]
    await wait_for(lambda: stopped_steps(local_cluster, "base", job.job_id))
    [(step, total)] = stopped_steps(local_cluster, "base", job.job_id)
    assert total == STEPS
    assert seen_step <= step < STEPS, "the model stopped early, between steps"
    assert finished_runs(local_cluster, "base", job.job_id) == 0


async def test_stage_deadline_stops_the_model_and_the_stage_serves_the_next_call(
    local_cluster: LocalCluster,
) -> None:
    slow = stage_pb2.RunRequest(
        job_id="deadline-test",
        txt2img=stage_pb2.Txt2ImgParams(prompt="slow", width=64, height=64, steps=STEPS),
    )
    async with client_channel(local_cluster.addresses["base"]) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Run(slow, timeout=0.5, metadata=[("x-job-id", "deadline-test")]):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        await wait_for(lambda: stopped_steps(local_cluster, "base", "deadline-test"))
        [(step, total)] = stopped_steps(local_cluster, "base", "deadline-test")
        assert step < total == STEPS

        quick = stage_pb2.RunRequest(
            txt2img=stage_pb2.Txt2ImgParams(prompt="quick", width=64, height=64, steps=2)
        )
        events = [event async for event in stub.Run(quick, timeout=60)]
        assert events[-1].HasField("result")
