"""Replicas, retries, backoff, deadlines and fallback routes of a stage call."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import pytest

from stageflow.orchestrator.replicas import (
    FALLBACK,
    PRIMARY,
    ReplicatedStageClient,
    RetryPolicy,
    Route,
    StageCaller,
    parse_addresses,
    stage_client_for,
)
from stageflow.orchestrator.stage_client import GrpcStageClient, StageCallError
from stageflow.v1 import stage_pb2
from tests.unit.orchestrator.fakes import FakeStage

NOW = 1_000_000.0
REQUEST = stage_pb2.RunRequest(request_id="job.upscale", upscale=stage_pb2.UpscaleParams())


class Script(FakeStage):
    """A replica failing its first calls with the codes in `errors` (after one
    progress event: it dies mid-stream), then answering like FakeStage."""

    def __init__(self, name: str, errors: Sequence[str] = ()) -> None:
        super().__init__(name, steps=2)
        self.errors = list(errors)

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        if self.errors:
            self.calls.append(request)
            self.timeouts.append(timeout)
            yield stage_pb2.RunResponse(progress=stage_pb2.Progress(step=1, total_steps=2))
            raise StageCallError(self.errors.pop(0), f"{self.name} failed")
        async for response in super().run(request, timeout=timeout, metadata=metadata):
            yield response


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _caller(clock: Clock, uniform: float | None = None, **policy: float) -> StageCaller:
    draw = (lambda: uniform) if uniform is not None else random.Random(7).random
    return StageCaller(RetryPolicy(**policy), sleep=clock.sleep, clock=clock, uniform=draw)  # type: ignore[arg-type]


async def _call(
    caller: StageCaller,
    client: object,
    fallback: Route | None = None,
    *,
    deadline: float | None = None,
    stage_timeout: float = 30.0,
) -> tuple[str, str, int]:
    """(output key, route, attempts) of one call."""
    outcome = await caller.call(
        Route(PRIMARY, client, REQUEST),  # type: ignore[arg-type]
        fallback,
        stage_timeout=stage_timeout,
        deadline=deadline,
        metadata=[],
        on_progress=lambda _: None,
    )
    return outcome.result.output.key, outcome.route.name, outcome.attempts


def test_an_address_setting_is_a_comma_separated_list() -> None:
    assert parse_addresses(" a:1, dns:///b:2 ,") == ["a:1", "dns:///b:2"]
    with pytest.raises(ValueError, match="no stage address"):
        parse_addresses(" , ")
    assert isinstance(stage_client_for("a:1"), GrpcStageClient)
    assert isinstance(stage_client_for("a:1,b:2"), ReplicatedStageClient)


async def test_calls_rotate_over_the_replicas() -> None:
    replicas = [Script(f"r{i}") for i in range(3)]
    client = ReplicatedStageClient(replicas)
    for _ in range(6):
        async for _event in client.run(REQUEST, timeout=1.0, metadata=[]):
            pass
    assert [len(r.calls) for r in replicas] == [2, 2, 2]


async def test_a_replica_that_was_unavailable_is_skipped_for_a_while() -> None:
    clock = Clock()
    replicas = [Script("a", ["UNAVAILABLE"]), Script("b"), Script("c")]
    client = ReplicatedStageClient(replicas, down_seconds=10.0, clock=clock)
    with pytest.raises(StageCallError):
        async for _event in client.run(REQUEST, timeout=1.0, metadata=[]):
            pass
    for _ in range(4):
        async for _event in client.run(REQUEST, timeout=1.0, metadata=[]):
            pass
    assert [len(r.calls) for r in replicas] == [1, 2, 2]
    clock.now += 11.0  # back in the rotation once its time out is over
    for _ in range(3):
        async for _event in client.run(REQUEST, timeout=1.0, metadata=[]):
            pass
    assert len(replicas[0].calls) == 2


async def test_a_replica_dying_mid_stream_is_retried_on_another_after_a_backoff() -> None:
    clock = Clock()
    dying, healthy = Script("a", ["UNAVAILABLE"]), Script("b")
    client = ReplicatedStageClient([dying, healthy], clock=clock)
    key, route, attempts = await _call(_caller(clock), client)
    assert (key, route, attempts) == (healthy.output_key(1), PRIMARY, 2)
    assert healthy.calls == [REQUEST]  # the very same request: same bytes
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] < 0.2


async def test_backoff_delays_grow_up_to_the_cap_and_are_jittered() -> None:
    policy = {"base_seconds": 0.1, "cap_seconds": 1.0, "budget_seconds": 3.0}
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    # The largest draw shows the bounds themselves: doubling, then capped.
    clock = Clock()
    with pytest.raises(StageCallError) as err:
        await _call(_caller(clock, uniform=0.999, **policy), Script("a", ["UNAVAILABLE"] * 9))
    assert err.value.code == "UNAVAILABLE" and err.value.attempts == 7
    assert clock.sleeps == pytest.approx([0.999 * b for b in bounds])
    # Random draws: each delay within [0, its bound), and not all equal to it.
    clock = Clock()
    with pytest.raises(StageCallError):
        await _call(_caller(clock, **policy), Script("a", ["UNAVAILABLE"] * 99))
    drawn = [min(1.0, 0.1 * 2.0**retry) for retry in range(len(clock.sleeps))]
    assert len(clock.sleeps) >= len(bounds)
    assert all(0 <= d < b for d, b in zip(clock.sleeps, drawn, strict=True))
    assert len({round(d / b, 6) for d, b in zip(clock.sleeps, drawn, strict=True)}) > 1


async def test_an_outage_is_ridden_out_by_time_not_by_attempt_count() -> None:
    """A stage down for 30 s (a restart, its store down): the old budget of
    five attempts was spent in about 3 s; the default budget is a duration."""
    clock = Clock()
    stage = Script("a", ["UNAVAILABLE"] * 40)
    key, route, attempts = await _call(_caller(clock, uniform=0.5), stage)
    assert (key, route, attempts) == (stage.output_key(41), PRIMARY, 41)
    assert 30.0 < clock.now - NOW < RetryPolicy().budget_seconds
    assert max(clock.sleeps) <= RetryPolicy().cap_seconds


async def test_retries_end_once_the_budget_is_spent_and_say_so() -> None:
    clock = Clock()
    with pytest.raises(StageCallError) as err:
        await _call(
            _caller(clock, uniform=0.999, budget_seconds=10.0), Script("a", ["UNAVAILABLE"] * 99)
        )
    assert err.value.code == "UNAVAILABLE"
    assert "retry budget is 10 s" in err.value.message
    assert 10.0 <= clock.now - NOW < 10.0 + RetryPolicy().cap_seconds


async def test_resource_exhausted_is_backed_off_and_given_up_after_its_limit() -> None:
    clock = Clock()
    full = Script("a", ["RESOURCE_EXHAUSTED"] * 9)
    with pytest.raises(StageCallError) as err:
        await _call(_caller(clock, exhausted_max_attempts=3), full)
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.attempts == 3
    assert len(full.calls) == 3 and len(clock.sleeps) == 2
    assert all(s > 0 for s in clock.sleeps)


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL", "DEADLINE_EXCEEDED"])
async def test_other_codes_are_not_retried(code: str) -> None:
    clock = Clock()
    stage = Script("a", [code])
    with pytest.raises(StageCallError) as err:
        await _call(_caller(clock), stage)
    assert err.value.code == code and err.value.attempts == 1
    assert len(stage.calls) == 1 and clock.sleeps == []


async def test_the_fallback_route_is_taken_after_resource_exhausted() -> None:
    clock = Clock()
    primary, light = Script("a", ["RESOURCE_EXHAUSTED"] * 9), Script("lanczos")
    fallback_request = stage_pb2.RunRequest(
        upscale=stage_pb2.UpscaleParams(mode=stage_pb2.UPSCALE_MODE_LANCZOS)
    )
    key, route, attempts = await _call(
        _caller(clock, exhausted_max_attempts=2),
        primary,
        Route(FALLBACK, light, fallback_request),
    )
    assert (key, route, attempts) == (light.output_key(1), FALLBACK, 3)
    assert light.calls == [fallback_request]


async def test_the_fallback_is_not_taken_for_other_failures() -> None:
    clock = Clock()
    light = Script("lanczos")
    with pytest.raises(StageCallError, match="INVALID_ARGUMENT"):
        await _call(
            _caller(clock), Script("a", ["INVALID_ARGUMENT"]), Route(FALLBACK, light, REQUEST)
        )
    assert light.calls == []


async def test_each_call_gets_the_smaller_of_the_stage_timeout_and_the_time_left() -> None:
    clock = Clock()
    stage = Script("a", ["UNAVAILABLE"])
    await _call(_caller(clock, uniform=0.5), stage, deadline=NOW + 8.0, stage_timeout=30.0)
    # 8 s left at first, less the backoff slept before the retry.
    assert stage.timeouts == pytest.approx([8.0, 8.0 - clock.sleeps[0]])
    stage = Script("b")
    await _call(_caller(clock), stage, deadline=clock.now + 60.0, stage_timeout=30.0)
    assert stage.timeouts == [30.0]
    stage = Script("c")
    await _call(_caller(clock), stage, stage_timeout=30.0)
    assert stage.timeouts == [30.0]


async def test_a_job_past_its_deadline_makes_no_call() -> None:
    clock = Clock()
    stage = Script("a")
    with pytest.raises(StageCallError, match="DEADLINE_EXCEEDED"):
        await _call(_caller(clock), stage, deadline=NOW - 1.0)
    assert stage.calls == []


async def test_retries_stop_when_the_backoff_would_pass_the_deadline() -> None:
    clock = Clock()
    stage = Script("a", ["UNAVAILABLE"] * 9)
    with pytest.raises(StageCallError, match="DEADLINE_EXCEEDED") as err:
        await _call(_caller(clock, uniform=0.999, base_seconds=1.0), stage, deadline=NOW + 2.5)
    assert "UNAVAILABLE" in str(err.value)  # names what it was retrying
    assert clock.now <= NOW + 2.5


async def test_round_robin_config_skips_a_replica_that_reports_not_serving() -> None:
    """What a draining pod relies on: once its health says NOT_SERVING, the
    orchestrator's round-robin channel sends it no new calls."""
    import grpc
    from grpc_health.v1 import health as grpc_health
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from stageflow.orchestrator.replicas import ROUND_ROBIN_CONFIG

    def whoami(name: str) -> grpc.GenericRpcHandler:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return name.encode()

        handler = grpc.unary_unary_rpc_method_handler(answer)
        return grpc.method_handlers_generic_handler("test.Who", {"Am": handler})

    servers, healths, ports = [], [], []
    for name in ("a", "b"):
        server = grpc.aio.server()
        health = grpc_health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        server.add_generic_rpc_handlers([whoami(name)])
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        servers.append(server)
        healths.append(health)
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    options = [("grpc.service_config", ROUND_ROBIN_CONFIG)]
    try:
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.unary_unary("/test.Who/Am")

            async def answers(n: int) -> set[bytes]:
                return {await call(b"", wait_for_ready=True, timeout=5) for _ in range(n)}

            assert await answers(10) == {b"a", b"b"}
            await healths[0].enter_graceful_shutdown()  # what SIGUSR1 does
            for _ in range(50):  # the health Watch reaches the channel
                if await answers(4) == {b"b"}:
                    break
            assert await answers(20) == {b"b"}
    finally:
        for server in servers:
            await server.stop(None)
