"""The stage directory: the orchestrator's stage services, what each said about
itself, and how many calls each may have in flight.

Each stage service (a name from the `stages` setting or a pipeline spec's
`service`) has one StageClient. Its Describe (model, size limits, parameter
ranges, capacity) is cached for DESCRIBE_TTL_SECONDS: submit-time checks read
the cache, the stage cache's key asks for a fresh one (a model may have been
hot-swapped), and the per-stage admission limits read whatever was last seen
without ever calling the stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager

from stageflow.core.logging import get_logger
from stageflow.orchestrator.bundle import input_scales
from stageflow.orchestrator.scheduler import StageScheduler
from stageflow.orchestrator.spec import PipelineSpec, services_of
from stageflow.orchestrator.stage_client import StageCallError, StageClient
from stageflow.orchestrator.validation import (
    base_size,
    check_against_stage,
    check_built,
    check_handoff,
    check_model,
)
from stageflow.v1 import orchestrator_pb2, stage_pb2

# A stage may be redeployed with another model; re-ask for its limits now and then.
DESCRIBE_TTL_SECONDS = 60.0

log = get_logger(__name__)


class StageDirectory:
    def __init__(
        self, clients: Mapping[str, StageClient], limits: Mapping[str, int] | None = None
    ) -> None:
        """`limits` caps the calls in flight per service (else its Describe's
        max_concurrency + max_queue; unlimited until it was described)."""
        self._clients = dict(clients)
        self._describes: dict[str, tuple[float, stage_pb2.DescribeResponse]] = {}
        self._scheduler = StageScheduler(self.described, limits)

    def __contains__(self, service: object) -> bool:
        return service in self._clients

    def names(self) -> frozenset[str]:
        return frozenset(self._clients)

    def client(self, service: str) -> StageClient:
        return self._clients[service]

    def slot(self, service: str, priority: int) -> AbstractAsyncContextManager[None]:
        """Hold one of the service's call slots (interactive before bulk) for a call."""
        return self._scheduler.slot(service, priority)

    def limit(self, service: str) -> int | None:
        """The calls in flight `service` may have (None: not limited yet)."""
        return self._scheduler.limit(service)

    async def close(self) -> None:
        """Start no more stage calls; return once those in flight have ended."""
        await self._scheduler.close()

    async def describe(
        self, service: str, *, fresh: bool = False
    ) -> stage_pb2.DescribeResponse | None:
        """The service's cached Describe (a new one when `fresh`), or None when it
        cannot be reached (it then validates the request itself when the job
        gets there)."""
        cached = self._describes.get(service)
        if not fresh and cached is not None and time.monotonic() - cached[0] < DESCRIBE_TTL_SECONDS:
            return cached[1]
        try:
            desc = await self._clients[service].describe()
        except StageCallError as err:
            log.info("stage.describe_failed", stage=service, error=str(err))
            return None
        self._describes[service] = (time.monotonic(), desc)
        return desc

    def described(self, service: str) -> stage_pb2.DescribeResponse | None:
        """The last Describe of `service`, however old; never calls it (the
        scheduler's limits must not cost a round trip per stage call)."""
        cached = self._describes.get(service)
        return cached[1] if cached is not None else None

    def forget(self, service: str) -> None:
        """Drop the cached Describe: the service answered with another model."""
        self._describes.pop(service, None)

    async def check(
        self,
        request: orchestrator_pb2.SubmitJobRequest,
        spec: PipelineSpec,
        pipeline: tuple[str, ...],
        runs: Mapping[str, stage_pb2.RunRequest],
        *,
        size: tuple[int, int] | None = None,
    ) -> tuple[int, int] | None:
        """Check the stages in `runs` (those about to run) against their
        services' Describe; raises InvalidArgument naming the field. A service
        that cannot be reached is not checked here. Returns the job's base
        size: the one it asked for, else its first stage's model default
        (None while that stage cannot be asked); `size` when given (a rerun
        that keeps its first stage's output)."""
        services = services_of(spec, pipeline)
        checked = [name for name in pipeline if name in runs]
        descs = await asyncio.gather(*(self.describe(services[name]) for name in checked))
        if size is None:
            size = base_size(request, await self.describe(services[pipeline[0]]))
        scales = input_scales(pipeline)
        for name, desc in zip(checked, descs, strict=True):
            if desc is not None:
                stage_spec = spec.stage(name)
                if stage_spec is not None and stage_spec.model:
                    check_model(name, stage_spec.model, desc, spec.name)
                check_against_stage(name, runs[name], desc, request, scales[name], size)
            # The kind's own rules, checked whether or not the stage answered.
            check_built(name, runs[name], request, desc.defaults if desc is not None else {})
        check_handoff(pipeline, runs, dict(zip(checked, descs, strict=True)), request)
        return size
