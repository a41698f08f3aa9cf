"""Outages are ridden out by time, not by attempt count, over real processes:
the only replica of a stage killed, kept down and restarted, and the S3 server
restarted mid-batch.

A cluster of its own over a SeaweedFS of its own (taking them down must not
disturb the shared ones), with the stage cache off so that every job calls its
stages. The old attempt budget (5 attempts, about 1.5-3 s of backoff) failed
every job of both tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.core.artifacts import get_artifact
from stageflow.serving.channels import client_channel
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.s3server import SeaweedFS

BUCKET = "outages"
# The issue asks for 60 s down; 12 s keeps CI quick. With the restart's model
# load the stage is unreachable for about 18 s, 6-12x the old attempt budget.
STAGE_DOWN_S = 12.0
S3_DOWN_S = 15.0
# A job submitted once the stage is SERVING again must reach it this fast.
PICKUP_S = 3.0
WAIT = 240.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("outage-s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path, s3: SeaweedFS
) -> Iterator[LocalCluster]:
    with LocalCluster(
        state_dir=tmp_path_factory.mktemp("outage-cluster"),
        models_dir=fixture_models,
        store_url=f"s3://{BUCKET}?endpoint={s3.info.endpoint}",
        s3_access_key=s3.info.access_key,
        s3_secret_key=s3.info.secret_key,
        torch_threads=1,
        orchestrator_args=["--stage-cache", "false", "--max-running-jobs", "8"],
    ) as cluster:
        yield cluster


def request(seed: int, stages: tuple[str, ...] = ()) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(
        bundle=pb.PromptBundle(base="a red circle", style="outage"),
        seed=seed,
        width=32,
        height=32,
        stages=list(stages),
        base=pb.BaseOptions(steps=4),
    )


async def finished(stub: pb_grpc.OrchestratorServiceStub, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            if event.WhichOneof("event") == "finished":
                return event.finished
    raise AssertionError(f"the watch of {job_id} ended early")


async def first_progress(stub: pb_grpc.OrchestratorServiceStub, job_id: str) -> float:
    """time.monotonic() when the job's first stage reported its first step."""
    async with asyncio.timeout(WAIT):
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            if event.WhichOneof("event") == "stage_progress":
                return time.monotonic()
            assert event.WhichOneof("event") != "finished", event.finished.error
    raise AssertionError(f"the watch of {job_id} ended early")


async def test_the_only_replica_of_a_stage_killed_kept_down_and_restarted(
    cluster: LocalCluster,
) -> None:
    async with client_channel(cluster.orchestrator_address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        warm = (await stub.SubmitJob(request(1, ("base",)))).job
        assert (await finished(stub, warm.job_id)).state == pb.JOB_STATE_SUCCEEDED

        base = cluster.process("base")
        base.kill()
        base.wait()
        down = time.monotonic()
        during = (await stub.SubmitJob(request(2, ("base",)))).job
        await asyncio.sleep(STAGE_DOWN_S - (time.monotonic() - down))
        await asyncio.to_thread(cluster.restart, "base")  # returns once it is SERVING
        serving = time.monotonic()
        after = (await stub.SubmitJob(request(3, ("base",)))).job

        started = await first_progress(stub, after.job_id)
        assert started - serving < PICKUP_S, "a new job waited for the channel to reconnect"
        # `during` waited for the stage to connect, then retried the UNAVAILABLE
        # answers of a stage still loading its model (not FAILED_PRECONDITION).
        for job in (during, after):
            done = await finished(stub, job.job_id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error


async def test_the_object_store_restarted_mid_batch_fails_no_job(
    cluster: LocalCluster, s3: SeaweedFS
) -> None:
    async with client_channel(cluster.orchestrator_address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        jobs = [(await stub.SubmitJob(request(100 + n))).job for n in range(8)]
        # Mid-batch: some stage runs done, most to go.
        async with asyncio.timeout(WAIT):
            while True:
                listed = (await stub.ListJobs(pb.ListJobsRequest(page_size=100))).jobs
                ours = [j for j in listed if j.job_id in {job.job_id for job in jobs}]
                done = sum(r.state == pb.STAGE_STATE_SUCCEEDED for j in ours for r in j.stages)
                if done >= 3:
                    break
                await asyncio.sleep(0.05)
        assert any(j.state != pb.JOB_STATE_SUCCEEDED for j in ours)

        stopped = time.monotonic()
        await asyncio.to_thread(s3.stop)
        await asyncio.sleep(S3_DOWN_S - (time.monotonic() - stopped))
        await asyncio.to_thread(s3.start)

        results = [await finished(stub, job.job_id) for job in jobs]
    assert [j.state for j in results] == [pb.JOB_STATE_SUCCEEDED] * len(jobs), [
        j.error for j in results
    ]
    store = s3.info.store(BUCKET)
    for job in results:
        get_artifact(store, job.final.key, job.final.sha256, field="final")
