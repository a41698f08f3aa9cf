"""GrpcStageClient against a real in-process gRPC server that is not there yet:
the only replica of a stage is waited for (bounded), a replica among others fails fast."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from stageflow.orchestrator.stage_client import GrpcStageClient, StageCallError
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc

REQUEST = stage_pb2.RunRequest(request_id="r", upscale=stage_pb2.UpscaleParams())


class Stage(stage_pb2_grpc.StageServiceServicer):
    async def Run(
        self, request: stage_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        yield stage_pb2.RunResponse(
            result=stage_pb2.StageResult(output=common_pb2.ArtifactRef(key="out.png"))
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_on(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    stage_pb2_grpc.add_StageServiceServicer_to_server(Stage(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server


async def results(client: GrpcStageClient, timeout: float | None = 30.0) -> list[str]:  # noqa: ASYNC109
    return [r.result.output.key async for r in client.run(REQUEST, timeout=timeout, metadata=[])]


async def test_a_call_waits_for_a_stage_that_comes_back_and_starts_at_once() -> None:
    port = free_port()
    client = GrpcStageClient(f"127.0.0.1:{port}", wait_ready_seconds=30.0)
    try:
        with pytest.raises(StageCallError):  # a first call: the stage is down for good
            await results(client, timeout=0.5)
        call = asyncio.create_task(results(client))
        await asyncio.sleep(1.0)
        assert not call.done()  # waiting, not failed
        server = await serve_on(port)
        back = time.monotonic()
        try:
            assert await asyncio.wait_for(call, 10) == ["out.png"]
            # The reconnect backoff is bounded (RECONNECT_OPTIONS); that it
            # matters after a long outage: tests/integration/test_outages.py.
            assert time.monotonic() - back < 2.5
        finally:
            await server.stop(None)
    finally:
        await client.close()


async def test_the_wait_is_bounded_and_a_replica_among_others_fails_fast() -> None:
    port = free_port()
    waiting = GrpcStageClient(f"127.0.0.1:{port}", wait_ready_seconds=0.5)
    failing_fast = GrpcStageClient(f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        with pytest.raises(StageCallError) as err:
            await results(waiting)
        assert err.value.code == "UNAVAILABLE" and "not reachable for" in err.value.message
        assert 0.5 <= time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(StageCallError) as err:
            await results(failing_fast)
        assert err.value.code == "UNAVAILABLE"
        assert time.monotonic() - started < 2.0
    finally:
        await waiting.close()
        await failing_fast.close()
