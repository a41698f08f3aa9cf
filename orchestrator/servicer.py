"""OrchestratorService over gRPC: decode, delegate to the JobRunner, encode.

Errors are stageflow.core.errors exceptions; the shared ErrorInterceptor maps them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from stageflow.orchestrator.artifacts import chunks
from stageflow.orchestrator.runner import DEFAULT_PAGE_SIZE, JobRunner
from stageflow.v1 import orchestrator_pb2, orchestrator_pb2_grpc

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    async def SubmitJob(
        self, request: orchestrator_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.SubmitJobResponse:
        return orchestrator_pb2.SubmitJobResponse(job=await self._runner.submit(request))

    async def WatchJob(
        self, request: orchestrator_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.WatchJobResponse]:
        async for event in self._runner.watch(request.job_id):
            yield event

    async def GetJob(
        self, request: orchestrator_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetJobResponse:
        versions = await self._runner.versions(request.job_id)
        return orchestrator_pb2.GetJobResponse(job=versions[-1], versions=versions)

    async def ListJobs(
        self, request: orchestrator_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ListJobsResponse:
        # 0 is proto3's "not set": the default page.
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        jobs = await self._runner.list_jobs(page_size, request.state)
        return orchestrator_pb2.ListJobsResponse(jobs=jobs)

    async def CancelJob(
        self, request: orchestrator_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.CancelJobResponse:
        return orchestrator_pb2.CancelJobResponse(job=await self._runner.cancel(request.job_id))

    async def RerunJob(
        self, request: orchestrator_pb2.RerunJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.RerunJobResponse:
        return orchestrator_pb2.RerunJobResponse(job=await self._runner.rerun(request))

    async def GetArtifact(
        self, request: orchestrator_pb2.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.GetArtifactResponse]:
        ref, data = await self._runner.artifact(request)
        for i, chunk in enumerate(chunks(data)):
            # The artifact's identity rides on the first message only.
            yield orchestrator_pb2.GetArtifactResponse(artifact=ref if i == 0 else None, data=chunk)
