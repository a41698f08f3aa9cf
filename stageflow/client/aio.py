"""`StageflowClient`: the async (grpc.aio) client of the orchestrator API."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import struct_pb2

from stageflow.client import recipe
from stageflow.client.download import receive_artifact, write_atomically
from stageflow.client.errors import FailedPrecondition, NotFound, from_rpc_error
from stageflow.client.options import job_state, options
from stageflow.client.settings import ClientSettings
from stageflow.v1 import common_pb2
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc

R = TypeVar("R")
# Bytes per UploadImageRequest (the server's message limit is far above).
UPLOAD_CHUNK_BYTES = 1024 * 1024


def open_channel(
    settings: ClientSettings, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to `settings.address` with the servers'
    explicit message limits in both directions (gRPC's default receive limit
    is 4 MiB), so a large message fails the same way on either side. TLS
    (mutual with a client certificate) when the settings name a CA or a
    certificate."""
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
    ]
    chain = list(interceptors) or None
    if settings.tls_ca or settings.tls_cert:

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(settings.tls_ca),
            private_key=read(settings.tls_key),
            certificate_chain=read(settings.tls_cert),
        )
        return grpc.aio.secure_channel(
            settings.address, credentials, options=options, interceptors=chain
        )
    return grpc.aio.insecure_channel(settings.address, options=options, interceptors=chain)


def _structs(values: Mapping[str, Mapping[str, Any]] | None) -> dict[str, struct_pb2.Struct]:
    """Options by stage name as the Structs SubmitJobRequest.options carries."""
    out = {}
    for stage, fields in (values or {}).items():
        out[stage] = struct_pb2.Struct()
        out[stage].update(dict(fields))
    return out


class StageflowClient:
    """Async client of stageflow.v1.OrchestratorService.

    `address` ("host:port") wins over `settings.address`; `settings` default to
    `ClientSettings.from_env()` (STAGEFLOW_ADDRESS, else 127.0.0.1:50051).
    `interceptors` are grpc.aio client interceptors for every call (e.g.
    tracing: the client itself depends on no tracing library). With
    `settings.api_key` (STAGEFLOW_API_KEY) every call carries
    `authorization: Bearer <key>`; `with_api_key(key)` is a client for another
    key over the same channel (a gateway serving many callers).

    The channel opens on first use, in the running event loop; `close()` it, or
    use `async with`. Methods return the generated protobuf messages; every
    failed call raises a `stageflow.client.errors.StageflowClientError`.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        settings: ClientSettings | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        settings = settings if settings is not None else ClientSettings.from_env()
        if address is not None:
            settings = dataclasses.replace(settings, address=address)
        self.settings = settings
        self._connection = _Connection(settings, tuple(interceptors))

    def with_api_key(self, api_key: str) -> StageflowClient:
        """A client sending `api_key` ("" for none) over this client's channel;
        closing either closes the channel for both."""
        clone = object.__new__(StageflowClient)
        clone.settings = dataclasses.replace(self.settings, api_key=api_key)
        clone._connection = self._connection
        return clone

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        key = self.settings.api_key
        return (("authorization", f"Bearer {key}"),) if key else ()

    @property
    def address(self) -> str:
        """The orchestrator this client talks to."""
        return self.settings.address

    @property
    def _stub(self) -> pb_grpc.OrchestratorServiceStub:
        return self._connection.stub()

    async def _unary(self, method: Callable[..., Awaitable[R]], request: Any) -> R:
        try:
            return await method(
                request, timeout=self.settings.timeout_seconds, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def submit(
        self,
        *,
        base: str,
        style: str = "",
        text: str = "",
        negative: str = "",
        seed: int = 42,
        width: int | None = None,
        height: int | None = None,
        base_options: Mapping[str, Any] | None = None,
        refine_options: Mapping[str, Any] | None = None,
        upscale_options: Mapping[str, Any] | None = None,
        stage_options: Mapping[str, Mapping[str, Any]] | None = None,
        request_id: str = "",
        stages: Sequence[str] = (),
        pipeline: str = "",
        priority: int = pb.PRIORITY_UNSPECIFIED,
        deadline_seconds: float | None = None,
        validate_only: bool = False,
    ) -> pb.Job:
        """Submit a job; returns at once with the job, QUEUED.

        `base`, `style`, `text`, `negative` make the prompt bundle; `width` and
        `height` are the base image's size (unset: the base model's default,
        e.g. its model.yaml's native size). `stage_options` holds the options
        of stage kinds without an options message (SubmitJobRequest.options),
        by stage name, e.g. {"sharpen": {"amount": 2}}. Option dicts take the proto field
        names of BaseOptions / RefineOptions / UpscaleOptions, and enum values
        as short names ("lanczos") or full ones ("UPSCALE_MODE_LANCZOS").
        `request_id` is an idempotency key (a second submit with it returns the
        first job); `pipeline` names the orchestrator's spec (empty: "default");
        `stages` overrides its order; `priority` picks the scheduling lane
        (unspecified: interactive); `deadline_seconds` bounds the whole job.
        With `validate_only` the orchestrator checks the request as a submit
        would and stores nothing (the job it returns has no id).
        """
        request = pb.SubmitJobRequest(
            bundle=pb.PromptBundle(
                base=base, style=style, overlay_text=text, negative_prompt=negative
            ),
            seed=seed,
            width=width,
            height=height,
            options=_structs(stage_options),
            base=options(pb.BaseOptions, base_options),
            refine=options(pb.RefineOptions, refine_options),
            upscale=options(pb.UpscaleOptions, upscale_options),
            request_id=request_id,
            stages=list(stages),
            pipeline=pipeline,
            priority=priority,  # type: ignore[arg-type]
            deadline_seconds=deadline_seconds,
            validate_only=validate_only,
        )
        return await self.submit_request(request)

    async def submit_request(self, request: pb.SubmitJobRequest) -> pb.Job:
        """Submit a job from a whole SubmitJobRequest (e.g. parsed from JSON)."""
        reply = await self._unary(self._stub.SubmitJob, request)
        return reply.job

    async def watch(self, job_id: str) -> AsyncGenerator[pb.WatchJobResponse, None]:
        """A job's events: a snapshot, stage events, then `finished`; the stream
        then ends. Leaving the loop early cancels the stream."""
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=self._metadata)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()  # a no-op once the stream ended

    async def get(self, job_id: str) -> pb.Job:
        """The latest version of a job as it stands."""
        reply = await self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return reply.job

    async def versions(self, job_id: str) -> builtins.list[pb.Job]:
        """Every version of a job, oldest first (the last is the latest)."""
        reply = await self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return builtins.list(reply.versions) or [reply.job]

    async def list(
        self,
        page_size: int = 50,
        state: int | str | None = None,
        *,
        page_token: str = "",
        query: str = "",
    ) -> builtins.list[pb.Job]:
        """Jobs newest first, at most `page_size`; only those in `state`
        ("succeeded", JOB_STATE_SUCCEEDED, ...) when given, only those whose
        prompt or overlay text contains `query` (ignoring case); from
        `page_token` on (see `list_page`)."""
        return builtins.list((await self.list_page(page_size, state, page_token, query)).jobs)

    async def list_page(
        self,
        page_size: int = 50,
        state: int | str | None = None,
        page_token: str = "",
        query: str = "",
    ) -> pb.ListJobsResponse:
        """One page as `list`, with its `next_page_token` (empty on the last
        page; pass it back, with the same filters, for the next)."""
        request = pb.ListJobsRequest(
            page_size=page_size,
            state=job_state(state),  # type: ignore[arg-type]
            page_token=page_token,
            query=query,
        )
        return await self._unary(self._stub.ListJobs, request)

    async def upload(self, data: bytes) -> pb.UploadImageResponse:
        """Store an image (PNG, JPEG or WebP bytes) of the caller's tenant as a
        job input; the answer's `upload_id` goes in SubmitJobRequest.input_image.
        InvalidArgument naming `data` for a bad format, size or header."""
        pieces = [data[i : i + UPLOAD_CHUNK_BYTES] for i in range(0, len(data), UPLOAD_CHUNK_BYTES)]
        requests = [pb.UploadImageRequest(data=piece) for piece in pieces or [b""]]
        try:
            return await self._stub.UploadImage(
                iter(requests), timeout=self.settings.timeout_seconds, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def share(
        self, job_id: str, version: int = 0, expires_in_seconds: int = 0
    ) -> pb.ShareArtifactResponse:
        """A signed share token of a job version's final image (version 0: the
        latest; expiry 0: the orchestrator's maximum)."""
        request = pb.ShareArtifactRequest(
            job_id=job_id, version=version, expires_in_seconds=expires_in_seconds
        )
        return await self._unary(self._stub.ShareArtifact, request)

    async def shared(self, token: str) -> tuple[common_pb2.ArtifactRef, bytes]:
        """The image a share token names (no API key needed), verified against
        its sha256. PermissionDenied for a bad token, OutOfRange once expired."""
        ref, data, _ = await self._shared(token)
        return ref, data

    async def shared_export(self, token: str) -> tuple[pb.Job, bytes]:
        """As `shared`, with the job version the token names, the image carrying
        its recipe (a PNG, as `export`)."""
        _, data, job = await self._shared(token)
        return job, recipe.with_recipe(data, job) if job.job_id else data

    async def _shared(self, token: str) -> tuple[common_pb2.ArtifactRef, bytes, pb.Job]:
        call = self._stub.GetSharedArtifact(
            pb.GetSharedArtifactRequest(token=token), timeout=self.settings.timeout_seconds
        )
        job = pb.Job()

        async def first_job() -> AsyncGenerator[Any, None]:  # GetSharedArtifactResponse
            async for response in call:
                if response.HasField("job") and not job.job_id:
                    job.CopyFrom(response.job)
                yield response

        try:
            ref, data = await receive_artifact(first_job(), "shared image")
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()
        return ref, data, job

    async def pipelines(self) -> builtins.list[pb.PipelineInfo]:
        """The orchestrator's pipeline specs (names for `submit(pipeline=...)`), by name."""
        reply = await self._unary(self._stub.ListPipelines, pb.ListPipelinesRequest())
        return builtins.list(reply.pipelines)

    async def cancel(self, job_id: str) -> pb.Job:
        """Cancel a job (its running stage call too); a finished job is returned unchanged."""
        reply = await self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id))
        return reply.job

    async def rerun(
        self,
        job_id: str,
        from_stage: str,
        *,
        base_options: Mapping[str, Any] | None = None,
        refine_options: Mapping[str, Any] | None = None,
        upscale_options: Mapping[str, Any] | None = None,
        bundle: Mapping[str, str] | None = None,
        stage_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> pb.Job:
        """Version N+1 of a finished job, recomputed from `from_stage` with these
        overrides (only the option sets given are sent; `bundle` takes base,
        style, overlay_text, negative_prompt; `stage_options` as in submit,
        merged key by key); returns it QUEUED."""
        request = pb.RerunJobRequest(
            job_id=job_id, from_stage=from_stage, options=_structs(stage_options)
        )
        for name, values in (
            ("base", base_options),
            ("refine", refine_options),
            ("upscale", upscale_options),
        ):
            if values:
                cls = type(getattr(request, name))
                getattr(request, name).CopyFrom(options(cls, values))
        if bundle:
            request.bundle.CopyFrom(options(pb.BundleOverrides, bundle))
        return await self.rerun_request(request)

    async def rerun_request(self, request: pb.RerunJobRequest) -> pb.Job:
        """Rerun from a whole RerunJobRequest (e.g. parsed from JSON)."""
        reply = await self._unary(self._stub.RerunJob, request)
        return reply.job

    async def download(
        self,
        job_id: str,
        *,
        version: int = 0,
        stage: str = "",
        key: str = "",
        path: str | PathLike[str] | None = None,
    ) -> bytes:
        """The bytes of one artifact of a job, streamed through the orchestrator
        (no store access, no URL) and verified against its sha256.

        `version` 0 is the latest; `stage` names the stage whose output to get
        (empty: the final image); or `key` names one of that version's
        artifacts. With `path`, the bytes are also written there (atomically;
        folders are created). Raises NotFound, FailedPrecondition (no such
        artifact yet), InvalidArgument, or DataLoss when the bytes do not match.
        """
        request = pb.GetArtifactRequest(job_id=job_id, version=version, stage=stage, key=key)
        return await self._download(request, path=path)

    async def fetch_final(
        self, job: pb.Job, *, path: str | PathLike[str] | None = None, with_recipe: bool = True
    ) -> bytes:
        """The final image of a succeeded job (that version's), verified against
        job.final.sha256 too, carrying its recipe (`stageflow.client.recipe`)
        unless `with_recipe` is False; with `path`, also written there."""
        if job.state != pb.JOB_STATE_SUCCEEDED or not job.final.key:
            state = pb.JobState.Name(job.state)
            raise FailedPrecondition(f"job {job.job_id} has no final image (state {state})")
        request = pb.GetArtifactRequest(job_id=job.job_id, version=job.version, key=job.final.key)
        data = await self._download(
            request,
            path=None,
            expected_sha256=job.final.sha256,
            what=f"final image of job {job.job_id}",
        )
        if with_recipe:
            data = recipe.with_recipe(data, job)
        if path is not None:
            await asyncio.to_thread(write_atomically, Path(path), data)
        return data

    async def export(
        self,
        job_id: str,
        *,
        version: int = 0,
        stage: str = "",
        path: str | PathLike[str] | None = None,
    ) -> tuple[pb.Job, bytes]:
        """A job version (0: the latest) and its final image, or `stage`'s
        output, as a PNG carrying the version's recipe; with `path`, also
        written there. NotFound naming `version` or `stage` (with the ones
        there are) for a version or stage the job does not have."""
        job = recipe.select_version(await self.versions(job_id), version)
        names = [run.stage for run in job.stages]
        if stage and stage not in names:
            raise NotFound(
                f"stage: job {job_id} version {job.version} has no stage {stage!r} "
                f"(has {', '.join(names)})"
            )
        data = await self.download(job_id, version=job.version or 1, stage=stage)
        data = recipe.with_recipe(data, job, stage=stage)
        if path is not None:
            await asyncio.to_thread(write_atomically, Path(path), data)
        return job, data

    async def _download(
        self,
        request: pb.GetArtifactRequest,
        *,
        path: str | PathLike[str] | None,
        expected_sha256: str = "",
        what: str = "",
    ) -> bytes:
        if not what:
            artifact = f"stage {request.stage}" if request.stage else request.key or "final image"
            version = f" version {request.version}" if request.version else ""
            what = f"{artifact} of job {request.job_id}{version}"
        call = self._stub.GetArtifact(
            request, timeout=self.settings.timeout_seconds, metadata=self._metadata
        )
        try:
            _, data = await receive_artifact(call, what, expected_sha256=expected_sha256)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()
        if path is not None:
            await asyncio.to_thread(write_atomically, Path(path), data)
        return data

    async def close(self) -> None:
        """Close the channel; the next call opens a new one."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Connection:
    """The channel and stub, opened on first use; shared by `with_api_key` clones."""

    def __init__(
        self, settings: ClientSettings, interceptors: tuple[grpc.aio.ClientInterceptor, ...]
    ) -> None:
        self._settings = settings
        self._interceptors = interceptors
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.OrchestratorServiceStub | None = None

    def stub(self) -> pb_grpc.OrchestratorServiceStub:
        if self._stub is None:
            self._channel = open_channel(self._settings, self._interceptors)
            self._stub = pb_grpc.OrchestratorServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None
