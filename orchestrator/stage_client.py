"""How the orchestrator talks to a stage: a small interface and its gRPC client.

The runner depends only on `StageClient`, so it is tested against fakes
(as vLLM's entrypoints depend on `EngineClient`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc

from stageflow.core.errors import StageflowError
from stageflow.serving.channels import client_channel
from stageflow.v1 import stage_pb2, stage_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class StageCallError(StageflowError):
    """A stage call ended with a non-OK status; `code` is the status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        # Stage calls made before giving up, retries included (set by StageCaller).
        self.attempts = 0

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class StageClient(Protocol):
    def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        """Progress events, then exactly one result. Raises StageCallError.
        Cancelling the consuming task cancels the call."""
        ...

    async def describe(self) -> stage_pb2.DescribeResponse:
        """The stage's model, size limits and parameter ranges. Raises StageCallError."""
        ...

    async def close(self) -> None: ...


class GrpcStageClient:
    """StageClient over one grpc.aio channel.

    The channel is opened on first use, so the client can be built outside the
    event loop that will use it.

    With `wait_ready_seconds` > 0 a Run call first waits (within its own
    timeout) for the channel to connect: a stage that is down or restarting is
    waited for, and the call starts the moment it is back, instead of failing
    UNAVAILABLE at once. 0 fails fast: what a replica among others wants, so
    that the call moves to another replica.
    """

    def __init__(
        self,
        address: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        describe_timeout: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
        wait_ready_seconds: float = 0.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`address` is any grpc target (`host:port`, `dns:///name:port`);
        `options` are extra channel arguments (e.g. a service config);
        `credentials` make the channel TLS (stageflow.serving.tls)."""
        self.address = address
        self._options = tuple(options)
        self._credentials = credentials
        self._max_message_bytes = max_message_bytes
        self._describe_timeout = describe_timeout
        self._wait_ready_seconds = wait_ready_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: stage_pb2_grpc.StageServiceStub | None = None

    def _get_stub(self) -> stage_pb2_grpc.StageServiceStub:
        if self._stub is None:
            self._channel = client_channel(
                self.address,
                max_message_bytes=self._max_message_bytes,
                options=self._options,
                credentials=self._credentials,
            )
            self._stub = stage_pb2_grpc.StageServiceStub(self._channel)
        return self._stub

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- a gRPC deadline the stage itself honours
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        stub = self._get_stub()
        wait = self._wait_ready_seconds > 0
        if wait:
            started = time.monotonic()
            await self._wait_ready(
                self._wait_ready_seconds
                if timeout is None
                else min(self._wait_ready_seconds, timeout)
            )
            if timeout is not None:  # the wait came out of the call's own deadline
                timeout = max(timeout - (time.monotonic() - started), 0.001)
        call = stub.Run(request, timeout=timeout, metadata=tuple(metadata), wait_for_ready=wait)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise StageCallError(err.code().name, err.details() or "") from err
        finally:
            # Reached on task cancellation and on early close by the consumer:
            # the stage must stop its denoising loop, not run on for nobody.
            call.cancel()

    async def _wait_ready(self, seconds: float) -> None:
        """Return once the channel is READY; UNAVAILABLE after `seconds`."""
        assert self._channel is not None
        try:
            async with asyncio.timeout(seconds):
                await self._channel.channel_ready()
        except TimeoutError:
            raise StageCallError(
                "UNAVAILABLE", f"the stage at {self.address} was not reachable for {seconds:.0f} s"
            ) from None

    async def describe(self) -> stage_pb2.DescribeResponse:
        try:
            response: stage_pb2.DescribeResponse = await self._get_stub().Describe(
                stage_pb2.DescribeRequest(), timeout=self._describe_timeout
            )
        except grpc.aio.AioRpcError as err:
            raise StageCallError(err.code().name, err.details() or "") from err
        return response

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
