"""`SyncStageflowClient`: the blocking client, for code without an event loop."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from stageflow.client.aio import StageflowClient
from stageflow.client.settings import ClientSettings
from stageflow.v1 import orchestrator_pb2 as pb

T = TypeVar("T")


class SyncStageflowClient:
    """Blocking facade over `StageflowClient`, with the same methods and
    arguments. It runs a private event loop, so it must not be called from a
    thread that is running one (use `StageflowClient` there). Close it, or use
    `with`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        settings: ClientSettings | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._runner = asyncio.Runner()
        self._client = StageflowClient(address, settings=settings, interceptors=interceptors)

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def settings(self) -> ClientSettings:
        return self._client.settings

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self._runner.run(wrapped())

    def submit(self, **kwargs: Any) -> pb.Job:
        """Same keywords as StageflowClient.submit."""
        return self._run(self._client.submit(**kwargs))

    def watch(self, job_id: str) -> Iterator[pb.WatchJobResponse]:
        """A job's events up to `finished`, as StageflowClient.watch."""
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

    def versions(self, job_id: str) -> builtins.list[pb.Job]:
        return self._run(self._client.versions(job_id))

    def list(
        self,
        page_size: int = 50,
        state: int | str | None = None,
        *,
        page_token: str = "",
        query: str = "",
    ) -> builtins.list[pb.Job]:
        return self._run(self._client.list(page_size, state, page_token=page_token, query=query))

    def list_page(
        self,
        page_size: int = 50,
        state: int | str | None = None,
        page_token: str = "",
        query: str = "",
    ) -> pb.ListJobsResponse:
        """As StageflowClient.list_page."""
        return self._run(self._client.list_page(page_size, state, page_token, query))

    def cancel(self, job_id: str) -> pb.Job:
        return self._run(self._client.cancel(job_id))

    def upload(self, data: bytes) -> pb.UploadImageResponse:
        """As StageflowClient.upload."""
        return self._run(self._client.upload(data))

    def pipelines(self) -> builtins.list[pb.PipelineInfo]:
        return self._run(self._client.pipelines())

    def rerun(
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
        return self._run(
            self._client.rerun(
                job_id,
                from_stage,
                base_options=base_options,
                refine_options=refine_options,
                upscale_options=upscale_options,
                bundle=bundle,
                stage_options=stage_options,
            )
        )

    def download(
        self,
        job_id: str,
        *,
        version: int = 0,
        stage: str = "",
        key: str = "",
        path: str | PathLike[str] | None = None,
    ) -> bytes:
        """As StageflowClient.download."""
        return self._run(
            self._client.download(job_id, version=version, stage=stage, key=key, path=path)
        )

    def fetch_final(
        self, job: pb.Job, *, path: str | PathLike[str] | None = None, with_recipe: bool = True
    ) -> bytes:
        return self._run(self._client.fetch_final(job, path=path, with_recipe=with_recipe))

    def export(
        self,
        job_id: str,
        *,
        version: int = 0,
        stage: str = "",
        path: str | PathLike[str] | None = None,
    ) -> tuple[pb.Job, bytes]:
        """As StageflowClient.export."""
        return self._run(self._client.export(job_id, version=version, stage=stage, path=path))

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
