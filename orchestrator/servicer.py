"""OrchestratorService over gRPC: authenticate, decode, delegate to the JobRunner, encode.

Errors are stageflow.core.errors exceptions; the shared ErrorInterceptor maps them.
Each call names its caller's tenant to the runner, which does the scoping;
every call made with authentication on leaves one audit log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from stageflow.core import limits
from stageflow.core.errors import InvalidArgument
from stageflow.core.logging import get_logger
from stageflow.orchestrator.artifacts import chunks
from stageflow.orchestrator.auth import Authenticator, Principal, bearer
from stageflow.orchestrator.runner import DEFAULT_PAGE_SIZE, JobRunner
from stageflow.serving.limits import check_request, checks_itself
from stageflow.v1 import orchestrator_pb2, orchestrator_pb2_grpc

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
# Requests are checked against their limits after authentication (in `_call`).
checks_itself(SERVICE_NAME)

audit = get_logger("stageflow.audit")


@dataclass
class _Call:
    principal: Principal | None
    job_id: str

    @property
    def tenant(self) -> str | None:
        return None if self.principal is None else self.principal.tenant


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runner: JobRunner, auth: Authenticator | None = None) -> None:
        self._runner = runner
        self._auth = auth

    @asynccontextmanager
    async def _call(
        self, context: grpc.aio.ServicerContext, action: str, request: Message | None
    ) -> AsyncIterator[_Call]:
        """The call's principal (None with authentication off), once `request`
        is within its limits (a streamed request's messages are the handler's
        to bound); with authentication on, the caller is
        authenticated first, and one audit line is written on the way out:
        tenant, key id, action, job id (its first characters), outcome."""
        job_id = str(getattr(request, "job_id", ""))[: limits.MAX_ID_CHARS]
        if self._auth is None or not self._auth.enabled:
            if request is not None:
                check_request(request)
            yield _Call(None, job_id)
            return
        call = _Call(None, job_id)
        outcome = "OK"
        try:
            key = bearer(context.invocation_metadata() or ())
            call.principal = await self._auth.authenticate(key)
            if request is not None:
                check_request(request)
            yield call
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except Exception as err:
            outcome = str(getattr(err, "code", "INTERNAL"))
            raise
        finally:
            principal = call.principal
            audit.info(
                "audit",
                tenant=principal.tenant if principal else "",
                key_id=principal.key_id if principal else "",
                action=action,
                job_id=call.job_id,
                outcome=outcome,
            )

    async def SubmitJob(
        self, request: orchestrator_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.SubmitJobResponse:
        async with self._call(context, "SubmitJob", request) as call:
            if call.principal is not None and call.principal.priority == "bulk":
                # A bulk key's jobs all take the bulk lane, whatever they ask for.
                bulk = orchestrator_pb2.SubmitJobRequest()
                bulk.CopyFrom(request)
                bulk.priority = orchestrator_pb2.PRIORITY_BULK
                request = bulk
            job = await self._runner.submit(request, call.tenant)
            call.job_id = job.job_id
            return orchestrator_pb2.SubmitJobResponse(job=job)

    async def WatchJob(
        self, request: orchestrator_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.WatchJobResponse]:
        async with self._call(context, "WatchJob", request) as call:
            async for event in self._runner.watch(request.job_id, call.tenant):
                yield event

    async def GetJob(
        self, request: orchestrator_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetJobResponse:
        async with self._call(context, "GetJob", request) as call:
            versions = await self._runner.versions(request.job_id, call.tenant)
            return orchestrator_pb2.GetJobResponse(job=versions[-1], versions=versions)

    async def ListJobs(
        self, request: orchestrator_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ListJobsResponse:
        async with self._call(context, "ListJobs", request) as call:
            # 0 is proto3's "not set": the default page.
            page_size = request.page_size or DEFAULT_PAGE_SIZE
            jobs, token = await self._runner.list_page(
                page_size, request.state, call.tenant, request.page_token, request.query
            )
            return orchestrator_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: orchestrator_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.CancelJobResponse:
        async with self._call(context, "CancelJob", request) as call:
            job = await self._runner.cancel(request.job_id, call.tenant)
            return orchestrator_pb2.CancelJobResponse(job=job)

    async def RerunJob(
        self, request: orchestrator_pb2.RerunJobRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.RerunJobResponse:
        async with self._call(context, "RerunJob", request) as call:
            job = await self._runner.rerun(request, call.tenant)
            return orchestrator_pb2.RerunJobResponse(job=job)

    async def GetArtifact(
        self, request: orchestrator_pb2.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.GetArtifactResponse]:
        async with self._call(context, "GetArtifact", request) as call:
            ref, data = await self._runner.artifact(request, call.tenant)
            for i, chunk in enumerate(chunks(data)):
                # The artifact's identity rides on the first message only.
                yield orchestrator_pb2.GetArtifactResponse(
                    artifact=ref if i == 0 else None, data=chunk
                )

    async def UploadImage(
        self,
        request_iterator: AsyncIterator[orchestrator_pb2.UploadImageRequest],
        context: grpc.aio.ServicerContext,
    ) -> orchestrator_pb2.UploadImageResponse:
        async with self._call(context, "UploadImage", None) as call:
            limit = self._runner.upload_max_bytes
            data = bytearray()
            async for message in request_iterator:
                check_request(message)  # each message within its limits
                data += message.data
                if len(data) > limit:  # stop reading: it is refused whatever follows
                    raise InvalidArgument("data", f"must be at most {limit} bytes")
            return await self._runner.upload(bytes(data), call.tenant)

    async def ShareArtifact(
        self, request: orchestrator_pb2.ShareArtifactRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ShareArtifactResponse:
        async with self._call(context, "ShareArtifact", request) as call:
            return await self._runner.share(request, call.tenant)

    async def GetSharedArtifact(
        self, request: orchestrator_pb2.GetSharedArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.GetSharedArtifactResponse]:
        # No API key: the signed token is the credential (checked by the runner).
        outcome = "OK"
        try:
            check_request(request)  # no key to authenticate first: the limits at once
            ref, data, job = await self._runner.shared_artifact(request.token)
        except Exception as err:
            outcome = str(getattr(err, "code", "INTERNAL"))
            raise
        finally:
            if self._auth is not None and self._auth.enabled:
                job_id = request.token.split("/", 1)[0][:40]
                audit.info(
                    "audit",
                    tenant="",
                    key_id="share-link",
                    action="GetSharedArtifact",
                    job_id=job_id,
                    outcome=outcome,
                )
        for i, chunk in enumerate(chunks(data)):
            yield orchestrator_pb2.GetSharedArtifactResponse(
                artifact=ref if i == 0 else None, data=chunk, job=job if i == 0 else None
            )

    async def ListPipelines(
        self, request: orchestrator_pb2.ListPipelinesRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ListPipelinesResponse:
        async with self._call(context, "ListPipelines", request):
            return orchestrator_pb2.ListPipelinesResponse(pipelines=self._runner.pipelines())
