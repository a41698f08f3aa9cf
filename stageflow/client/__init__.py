"""The Python client of the orchestrator, for people, scripts and internal services.

`StageflowClient` is async (grpc.aio); `SyncStageflowClient` wraps it for code
that has no event loop. Both return the generated protobuf messages unchanged.
Option dicts take the proto field names; enum values may be short names
("lanczos", "inpaint") or the full proto names ("UPSCALE_MODE_LANCZOS").
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from stageflow.core.errors import DataLoss, FailedPrecondition, InvalidArgument
from stageflow.serving.channels import client_channel
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc

UNARY_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_S = 60.0
M = TypeVar("M", bound=Message)
T = TypeVar("T")


def _enum_prefix(enum_name: str) -> str:
    """RefineMode -> REFINE_MODE_ (the buf-style prefix of its values)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _expand_enums(descriptor: Descriptor, values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn short enum names ("lanczos") into full ones, recursing into messages."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is not None and fd.enum_type is not None and isinstance(value, str):
            full = value.upper()
            prefix = _enum_prefix(fd.enum_type.name)
            value = full if full in fd.enum_type.values_by_name else prefix + full
        elif fd is not None and fd.message_type is not None and isinstance(value, Mapping):
            value = _expand_enums(fd.message_type, value)
        out[key] = value
    return out


def options(cls: type[M], values: Mapping[str, Any] | None) -> M:
    """Build an options message from a dict; unknown fields or values raise InvalidArgument."""
    msg = cls()
    if not values:
        return msg
    try:
        return json_format.ParseDict(_expand_enums(cast(Descriptor, msg.DESCRIPTOR), values), msg)
    except json_format.ParseError as err:
        raise InvalidArgument(cls.DESCRIPTOR.name, str(err)) from None


def job_state(value: int | str | None) -> int:
    """JobState from "succeeded", "JOB_STATE_SUCCEEDED" or its number; None -> unspecified."""
    if value is None:
        return pb.JOB_STATE_UNSPECIFIED
    if isinstance(value, int):
        return value
    name = value.upper()
    name = name if name.startswith("JOB_STATE_") else "JOB_STATE_" + name
    try:
        return pb.JobState.Value(name)
    except ValueError:
        raise InvalidArgument("state", f"unknown job state {value!r}") from None


def read_url(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The bytes behind a file:// or http(s):// URL (the forms final_url takes)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).read_bytes()
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            data: bytes = reply.read()
            return data
    raise InvalidArgument("final_url", f"unsupported URL scheme {parsed.scheme!r} in {url!r}")


def verified(data: bytes, sha256: str, what: str) -> bytes:
    """data, once its sha256 matches; DataLoss otherwise."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise DataLoss(f"{what}: sha256 is {actual}, the job records {sha256}")
    return data


class StageflowClient:
    """Async client of stageflow.v1.OrchestratorService at `address` ("host:port").

    The channel opens on first use, in the running event loop; `close()` it
    (or use `async with`).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.OrchestratorServiceStub | None = None

    @property
    def _stub(self) -> pb_grpc.OrchestratorServiceStub:
        if self._stub_ is None:
            self._channel = client_channel(self.address)
            self._stub_ = pb_grpc.OrchestratorServiceStub(self._channel)
        return self._stub_

    async def submit(
        self,
        *,
        base: str,
        style: str,
        text: str = "",
        negative: str = "",
        seed: int = 42,
        width: int = 128,
        height: int = 128,
        base_options: Mapping[str, Any] | None = None,
        refine_options: Mapping[str, Any] | None = None,
        upscale_options: Mapping[str, Any] | None = None,
        request_id: str = "",
        stages: Sequence[str] = (),
        pipeline: str = "",
        priority: int = pb.PRIORITY_UNSPECIFIED,
    ) -> pb.Job:
        """Submit a job; returns at once with the queued job. `pipeline` names
        the orchestrator's spec (empty: "default"); `stages` overrides its order;
        `priority` picks the scheduling lane (unspecified: interactive)."""
        request = pb.SubmitJobRequest(
            bundle=pb.PromptBundle(
                base=base, style=style, overlay_text=text, negative_prompt=negative
            ),
            seed=seed,
            width=width,
            height=height,
            base=options(pb.BaseOptions, base_options),
            refine=options(pb.RefineOptions, refine_options),
            upscale=options(pb.UpscaleOptions, upscale_options),
            request_id=request_id,
            stages=list(stages),
            pipeline=pipeline,
            priority=priority,  # type: ignore[arg-type]
        )
        reply = await self._stub.SubmitJob(request, timeout=UNARY_TIMEOUT_S)
        return reply.job

    async def watch(self, job_id: str) -> AsyncGenerator[pb.WatchJobResponse, None]:
        """A job's events: snapshot, stage events, then `finished`; the stream then ends."""
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()  # a no-op once the stream ended; stops it when the caller leaves early

    async def get(self, job_id: str) -> pb.Job:
        reply = await self._stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=UNARY_TIMEOUT_S)
        return reply.job

    async def versions(self, job_id: str) -> builtins.list[pb.Job]:
        """Every version of a job, oldest first (the last is the latest)."""
        reply = await self._stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=UNARY_TIMEOUT_S)
        return builtins.list(reply.versions) or [reply.job]

    async def rerun(
        self,
        job_id: str,
        from_stage: str,
        *,
        base_options: Mapping[str, Any] | None = None,
        refine_options: Mapping[str, Any] | None = None,
        upscale_options: Mapping[str, Any] | None = None,
        bundle: Mapping[str, str] | None = None,
    ) -> pb.Job:
        """Version N+1 of a finished job, recomputed from `from_stage` with these
        overrides (only the option sets given are sent); returns it QUEUED."""
        request = pb.RerunJobRequest(job_id=job_id, from_stage=from_stage)
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
        reply = await self._stub.RerunJob(request, timeout=UNARY_TIMEOUT_S)
        return reply.job

    async def list(
        self, page_size: int = 50, state: int | str | None = None
    ) -> builtins.list[pb.Job]:
        """Jobs newest first, only those in `state` when given."""
        request = pb.ListJobsRequest(page_size=page_size, state=job_state(state))  # type: ignore[arg-type]
        reply = await self._stub.ListJobs(request, timeout=UNARY_TIMEOUT_S)
        return list(reply.jobs)

    async def cancel(self, job_id: str) -> pb.Job:
        reply = await self._stub.CancelJob(
            pb.CancelJobRequest(job_id=job_id), timeout=UNARY_TIMEOUT_S
        )
        return reply.job

    async def fetch_final(self, job: pb.Job) -> bytes:
        """The final image of a succeeded job, verified against job.final.sha256."""
        if not job.final_url or not job.final.sha256:
            state = pb.JobState.Name(job.state)
            raise FailedPrecondition(f"job {job.job_id} has no final image (state {state})")
        data = await asyncio.to_thread(read_url, job.final_url)
        return verified(data, job.final.sha256, f"final image of job {job.job_id}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub_ = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SyncStageflowClient:
    """Blocking facade over StageflowClient: it runs a private event loop."""

    def __init__(self, address: str) -> None:
        self._runner = asyncio.Runner()
        self._client = StageflowClient(address)

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self._runner.run(wrapped())

    def submit(self, **kwargs: Any) -> pb.Job:
        """Same keywords as StageflowClient.submit."""
        return self._run(self._client.submit(**kwargs))

    def watch(self, job_id: str) -> Iterator[pb.WatchJobResponse]:
        events = self._client.watch(job_id)
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def get(self, job_id: str) -> pb.Job:
        return self._run(self._client.get(job_id))

    def list(self, page_size: int = 50, state: int | str | None = None) -> builtins.list[pb.Job]:
        return self._run(self._client.list(page_size, state))

    def cancel(self, job_id: str) -> pb.Job:
        return self._run(self._client.cancel(job_id))

    def fetch_final(self, job: pb.Job) -> bytes:
        return self._run(self._client.fetch_final(job))

    def close(self) -> None:
        self._run(self._client.close())
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
