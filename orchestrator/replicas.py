"""Several replicas per stage, and calls that survive losing one.

A stage's address setting is a comma-separated list of `host:port` and/or
`dns:///name:port` targets. Each entry gets its own channel and the calls
rotate over the entries (round robin). We balance over our own per-endpoint
channels rather than hand a static list to grpc's LB policy because a retry
must go to *another* replica, and only we know which one just failed: a
replica that answered UNAVAILABLE is skipped for `down_seconds`. A `dns:///`
entry is one channel with grpc's `round_robin` policy: the resolver follows the
A records as replicas come and go (a headless Kubernetes Service), and
round_robin leaves out of its picks subchannels in TRANSIENT_FAILURE and, with
client-side health checking on, replicas that report NOT_SERVING.

`StageCaller` runs one stage call to its end: UNAVAILABLE (a replica down or
dying mid-stream) is retried after an exponential backoff with full jitter for
as long as the retry budget (a duration: outages are ridden out by time, not
by attempt count) and the job's remaining deadline allow; RESOURCE_EXHAUSTED (a
replica full) is retried the same way a few times before the fallback; every
other code fails at once. The only replica of a stage is called through a
client that waits for its channel to connect, so a call to a stage that is
restarting starts the moment the stage is back. Stages are deterministic (same request, same
bytes), so a call restarted elsewhere yields the output the first would have.
When the primary route stays RESOURCE_EXHAUSTED, the spec's fallback route
(another service or lighter parameters) is tried the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from stageflow.core.logging import get_logger
from stageflow.orchestrator.stage_client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    GrpcStageClient,
    StageCallError,
    StageClient,
)
from stageflow.v1 import stage_pb2

log = get_logger(__name__)

PRIMARY = "primary"
FALLBACK = "fallback"
# grpc's client-side round robin over every address a dns:/// name resolves to,
# picking only replicas whose grpc.health.v1 Watch says SERVING: a pod that
# turned NOT_SERVING in its preStop hook gets no new calls before its drain
# (DNS alone would keep it until its connection closes).
ROUND_ROBIN_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def parse_addresses(value: str) -> list[str]:
    """The entries of a comma-separated address setting; ValueError when none."""
    addresses = [part.strip() for part in value.split(",") if part.strip()]
    if not addresses:
        raise ValueError(f"no stage address in {value!r}")
    return addresses


def stage_client_for(
    value: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    wait_ready_seconds: float = 0.0,
) -> StageClient:
    """A client for one address setting: one channel per entry, balanced (TLS
    with `credentials`).

    A single entry (one address, or one dns:/// name whose channel balances
    itself) waits up to `wait_ready_seconds` for its channel to connect before
    a call; entries among several fail fast, so that a call moves on to
    another replica."""
    addresses = parse_addresses(value)
    wait = wait_ready_seconds if len(addresses) == 1 else 0.0
    clients: list[StageClient] = [
        GrpcStageClient(
            address,
            max_message_bytes,
            options=[("grpc.service_config", ROUND_ROBIN_CONFIG)]
            if address.startswith("dns:")
            else (),
            wait_ready_seconds=wait,
            credentials=credentials,
        )
        for address in addresses
    ]
    if len(clients) == 1:
        return clients[0]
    return ReplicatedStageClient(clients)


class ReplicatedStageClient:
    """StageClient over several replicas: round robin, skipping replicas that
    answered UNAVAILABLE in the last `down_seconds` (unless all did)."""

    def __init__(
        self,
        replicas: Sequence[StageClient],
        *,
        down_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica")
        self._replicas = list(replicas)
        self._down_until = [0.0] * len(self._replicas)
        self._down_seconds = down_seconds
        self._clock = clock
        self._next = 0

    def _pick(self) -> int:
        """The next replica in turn that is not marked down (the next in turn
        when all are: one may have come back)."""
        now = self._clock()
        count = len(self._replicas)
        start = self._next
        self._next = (start + 1) % count
        for offset in range(count):
            index = (start + offset) % count
            if self._down_until[index] <= now:
                self._next = (index + 1) % count
                return index
        return start

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        index = self._pick()
        try:
            async for response in self._replicas[index].run(
                request, timeout=timeout, metadata=metadata
            ):
                yield response
        except StageCallError as err:
            if err.code == "UNAVAILABLE":
                self._down_until[index] = self._clock() + self._down_seconds
                log.warning("stage.replica_down", replica=index, error=str(err))
            raise

    async def describe(self) -> stage_pb2.DescribeResponse:
        """The first replica in turn that answers (they serve the same model)."""
        error: StageCallError | None = None
        for _ in self._replicas:
            index = self._pick()
            try:
                return await self._replicas[index].describe()
            except StageCallError as err:
                if err.code == "UNAVAILABLE":
                    self._down_until[index] = self._clock() + self._down_seconds
                error = err
        assert error is not None
        raise error

    async def close(self) -> None:
        for replica in self._replicas:
            await replica.close()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog's "Full Jitter")."""

    base_seconds: float = 0.2
    cap_seconds: float = 2.0
    # How long UNAVAILABLE is retried, from the start of the first failed
    # attempt (a stage restart, an object store outage): a duration, never
    # past the job's deadline.
    budget_seconds: float = 120.0
    # Attempts in all on RESOURCE_EXHAUSTED before the fallback route (or failing).
    exhausted_max_attempts: int = 3

    def bound(self, retry: int) -> float:
        """The largest delay before retry number `retry` (0 for the first retry)."""
        return min(self.cap_seconds, self.base_seconds * 2.0**retry)

    def delay(self, retry: int, uniform: Callable[[], float]) -> float:
        """A delay drawn uniformly from [0, bound(retry)): retries of many jobs
        after one replica's death spread out instead of arriving together."""
        return self.bound(retry) * uniform()


@dataclass(frozen=True)
class Route:
    """Where and how one stage call goes: the client and the exact request."""

    name: str
    client: StageClient
    request: stage_pb2.RunRequest


@dataclass(frozen=True)
class CallOutcome:
    result: stage_pb2.StageResult
    route: Route
    # Stage calls made, over both routes.
    attempts: int


ProgressSink = Callable[[stage_pb2.Progress], None]


class StageCaller:
    """Runs a stage call with retries, backoff, deadline and fallback.

    `sleep`, `clock` (wall time: deadlines outlive a restart) and `uniform`
    are injectable so tests see the delays without waiting for them.
    """

    def __init__(
        self,
        policy: RetryPolicy = RetryPolicy(),
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._uniform = uniform

    def timeout(self, stage_timeout: float, deadline: float | None) -> float:
        """The call's deadline: min(stage timeout, time left of the job).
        Raises DEADLINE_EXCEEDED when the job has no time left."""
        if deadline is None:
            return stage_timeout
        left = deadline - self._clock()
        if left <= 0:
            raise StageCallError("DEADLINE_EXCEEDED", "the job's deadline has passed")
        return min(stage_timeout, left)

    async def call(
        self,
        primary: Route,
        fallback: Route | None,
        *,
        stage_timeout: float,
        deadline: float | None,
        metadata: Sequence[tuple[str, str]],
        on_progress: ProgressSink,
    ) -> CallOutcome:
        """The stage's result; StageCallError (with `.attempts`) when it failed."""
        attempts = 0
        for route in (primary, fallback):
            if route is None:
                continue
            try:
                result, made = await self._with_retries(
                    route, stage_timeout, deadline, metadata, on_progress
                )
            except StageCallError as err:
                attempts += err.attempts
                err.attempts = attempts
                if err.code != "RESOURCE_EXHAUSTED" or route is fallback or fallback is None:
                    raise
                log.warning("stage.fallback", error=str(err))
                continue
            return CallOutcome(result, route, attempts + made)
        raise AssertionError("unreachable: the primary route either returns or raises")

    async def _with_retries(
        self,
        route: Route,
        stage_timeout: float,
        deadline: float | None,
        metadata: Sequence[tuple[str, str]],
        on_progress: ProgressSink,
    ) -> tuple[stage_pb2.StageResult, int]:
        exhausted = 0
        failing_since: float | None = None  # the start of the first UNAVAILABLE attempt
        attempts = 0
        while True:
            try:
                timeout = self.timeout(stage_timeout, deadline)
            except StageCallError as err:
                err.attempts = attempts
                raise
            attempts += 1
            started = self._clock()
            try:
                return await self._once(route, timeout, metadata, on_progress), attempts
            except StageCallError as err:
                err.attempts = attempts
                if err.code == "RESOURCE_EXHAUSTED":
                    exhausted += 1
                    if exhausted >= self.policy.exhausted_max_attempts:
                        raise
                elif err.code == "UNAVAILABLE":
                    failing_since = started if failing_since is None else failing_since
                    failing = self._clock() - failing_since
                    if failing >= self.policy.budget_seconds:
                        spent = StageCallError(
                            "UNAVAILABLE",
                            f"{err.message} (still failing after {failing:.0f} s of retries, "
                            f"the retry budget is {self.policy.budget_seconds:g} s)",
                        )
                        spent.attempts = attempts
                        raise spent from err
                else:
                    raise
                delay = self.policy.delay(attempts - 1, self._uniform)
                if deadline is not None and self._clock() + delay >= deadline:
                    late = StageCallError(
                        "DEADLINE_EXCEEDED", f"the job's deadline passed while retrying after {err}"
                    )
                    late.attempts = attempts
                    raise late from err
                log.info("stage.retry", route=route.name, error=str(err), delay_s=delay)
                await self._sleep(delay)

    @staticmethod
    async def _once(
        route: Route,
        timeout: float,  # noqa: ASYNC109 -- a gRPC deadline the stage itself honours
        metadata: Sequence[tuple[str, str]],
        on_progress: ProgressSink,
    ) -> stage_pb2.StageResult:
        result: stage_pb2.StageResult | None = None
        # Read the stream to its end (rather than break at the result) so the
        # call completes and the client generator closes now, not at GC.
        async for response in route.client.run(route.request, timeout=timeout, metadata=metadata):
            if response.WhichOneof("event") == "progress":
                on_progress(response.progress)
            elif response.WhichOneof("event") == "result":
                result = response.result
        if result is None:
            raise StageCallError("INTERNAL", "the stage's stream ended without a result")
        return result
