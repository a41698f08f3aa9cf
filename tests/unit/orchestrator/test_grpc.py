"""Real gRPC on loopback, in process: the stage client's error mapping and
cancellation, and the orchestrator servicer behind the shared ErrorInterceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.servicer import OrchestratorServicer
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.stage_client import GrpcStageClient, StageCallError
from stageflow.serving.interceptors import ErrorInterceptor
from stageflow.v1 import (
    common_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    stage_pb2,
    stage_pb2_grpc,
)
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage

WAIT = 5.0


class StageService(stage_pb2_grpc.StageServiceServicer):
    """Two steps then a result; `block` makes it wait after step 1 until cancelled."""

    def __init__(self) -> None:
        self.block = False
        self.fail: grpc.StatusCode | None = None
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.metadata: dict[str, str] = {}

    async def Run(
        self, request: stage_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        self.metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        if self.fail is not None:
            await context.abort(self.fail, "steps: must be in [1, 100], got 500")
        yield stage_pb2.RunResponse(progress=stage_pb2.Progress(step=1, total_steps=2))
        if self.block:
            self.entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        yield stage_pb2.RunResponse(progress=stage_pb2.Progress(step=2, total_steps=2))
        key = f"artifacts/{request.WhichOneof('params')}.png"
        yield stage_pb2.RunResponse(
            result=stage_pb2.StageResult(output=common_pb2.ArtifactRef(key=key, sha256="ab"))
        )

    async def Describe(
        self, request: stage_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> stage_pb2.DescribeResponse:
        return stage_pb2.DescribeResponse(kind="txt2img", max_side=512, ready=True)


async def _server(register: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def stage() -> AsyncIterator[tuple[StageService, GrpcStageClient]]:
    service = StageService()
    server, address = await _server(
        lambda s: stage_pb2_grpc.add_StageServiceServicer_to_server(service, s)
    )
    client = GrpcStageClient(address)
    yield service, client
    await client.close()
    await server.stop(0)


async def test_stage_client_streams_events_and_sends_metadata(
    stage: tuple[StageService, GrpcStageClient],
) -> None:
    service, client = stage
    request = stage_pb2.RunRequest(upscale=stage_pb2.UpscaleParams())
    events = [
        e.WhichOneof("event")
        async for e in client.run(request, timeout=WAIT, metadata=[("x-job-id", "job-1")])
    ]
    assert events == ["progress", "progress", "result"]
    assert service.metadata["x-job-id"] == "job-1"
    assert (await client.describe()).max_side == 512


async def test_stage_client_maps_status_to_stage_call_error(
    stage: tuple[StageService, GrpcStageClient],
) -> None:
    service, client = stage
    service.fail = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(StageCallError) as err:
        async for _ in client.run(stage_pb2.RunRequest(), timeout=WAIT, metadata=()):
            pass
    assert err.value.code == "INVALID_ARGUMENT"
    assert str(err.value) == "INVALID_ARGUMENT: steps: must be in [1, 100], got 500"


async def test_stage_client_maps_deadline_and_unreachable(
    stage: tuple[StageService, GrpcStageClient],
) -> None:
    service, client = stage
    service.block = True
    with pytest.raises(StageCallError) as err:
        async for _ in client.run(stage_pb2.RunRequest(), timeout=0.2, metadata=()):
            pass
    assert err.value.code == "DEADLINE_EXCEEDED"

    down = GrpcStageClient("127.0.0.1:1")
    try:
        with pytest.raises(StageCallError) as err:
            await down.describe()
        assert err.value.code == "UNAVAILABLE"
    finally:
        await down.close()


async def test_cancelling_the_consumer_cancels_the_stage_call(
    stage: tuple[StageService, GrpcStageClient],
) -> None:
    service, client = stage
    service.block = True

    async def consume() -> None:
        async for _ in client.run(stage_pb2.RunRequest(), timeout=WAIT, metadata=()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(service.entered.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(service.cancelled.wait(), WAIT)  # the stage saw it


@pytest.fixture
async def orchestrator(
    tmp_path: Path,
) -> AsyncIterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite")
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    runner = JobRunner(fakes, jobs, FakeSettings())
    servicer = OrchestratorServicer(runner)
    server, address = await _server(
        lambda s: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, s)
    )
    channel = grpc.aio.insecure_channel(address)
    yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    await channel.close()
    await server.stop(0)
    await runner.close()
    await jobs.close()


async def test_servicer_submit_watch_get_list(
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    submitted = await orchestrator.SubmitJob(
        orchestrator_pb2.SubmitJobRequest(
            bundle=orchestrator_pb2.PromptBundle(base="a castle"), width=64, height=64
        )
    )
    job_id = submitted.job.job_id
    call = orchestrator.WatchJob(orchestrator_pb2.WatchJobRequest(job_id=job_id), timeout=WAIT)
    kinds = [e.WhichOneof("event") async for e in call]
    assert await call.code() == grpc.StatusCode.OK
    assert kinds[0] == "snapshot" and kinds[-1] == "finished"
    got = await orchestrator.GetJob(orchestrator_pb2.GetJobRequest(job_id=job_id))
    assert got.job.state == orchestrator_pb2.JOB_STATE_SUCCEEDED
    assert got.job.final.key == "artifacts/upscale-1.png"
    listed = await orchestrator.ListJobs(orchestrator_pb2.ListJobsRequest())  # page_size 0
    assert [j.job_id for j in listed.jobs] == [job_id]
    cancelled = await orchestrator.CancelJob(orchestrator_pb2.CancelJobRequest(job_id=job_id))
    assert cancelled.job.state == orchestrator_pb2.JOB_STATE_SUCCEEDED  # finished: unchanged


async def test_servicer_errors_carry_their_status(
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orchestrator.SubmitJob(orchestrator_pb2.SubmitJobRequest(width=64, height=64))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle.base" in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orchestrator.GetJob(orchestrator_pb2.GetJobRequest(job_id="job-nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    call = orchestrator.WatchJob(orchestrator_pb2.WatchJobRequest(job_id="job-nope"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orchestrator.ListJobs(orchestrator_pb2.ListJobsRequest(page_size=1001))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (err.value.details() or "")


async def test_servicer_rerun_and_get_job_versions(
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    submitted = await orchestrator.SubmitJob(
        orchestrator_pb2.SubmitJobRequest(
            bundle=orchestrator_pb2.PromptBundle(base="a castle"), width=64, height=64
        )
    )
    job_id = submitted.job.job_id
    watch = orchestrator_pb2.WatchJobRequest(job_id=job_id)
    [_ async for _ in orchestrator.WatchJob(watch, timeout=WAIT)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orchestrator.RerunJob(orchestrator_pb2.RerunJobRequest(job_id=job_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_stage" in (err.value.details() or "")

    rerun = await orchestrator.RerunJob(
        orchestrator_pb2.RerunJobRequest(
            job_id=job_id,
            from_stage="upscale",
            upscale=orchestrator_pb2.UpscaleOptions(tile_size=64),
        )
    )
    assert rerun.job.version == 2
    [_ async for _ in orchestrator.WatchJob(watch, timeout=WAIT)]
    got = await orchestrator.GetJob(orchestrator_pb2.GetJobRequest(job_id=job_id))
    assert got.job.version == 2 and got.job.final.key == "artifacts/upscale-2.png"
    assert [v.version for v in got.versions] == [1, 2]
    assert got.versions[0].final.key == "artifacts/upscale-1.png"
    assert got.versions[1] == got.job
