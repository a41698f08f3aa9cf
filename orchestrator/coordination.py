"""Where a running job's writes go and whose slots its stage calls take.

The executor makes two kinds of request that depend on how many
orchestrators share the job database: storing the job at a stage boundary,
and holding one of a stage service's call slots. `Coordinator` is that seam,
so the executor (and the runner above it) has one code path:

- `LocalCoordinator`: one process owns every job (the SQLite store,
  `stageflow up`): a write is `JobStore.update`, a slot is the directory's
  in-process `PriorityGate` (interactive before bulk). Today's behaviour.
- `LeasedCoordinator`: several replicas over one PostgreSQL (`leases`): a
  write carries the job's fence and is refused once another replica claimed
  the job (`LeaseLost`), a slot is the in-process gate (lanes within this
  replica) and then one of the service's cluster-wide slots.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from stageflow.orchestrator.directory import StageDirectory
from stageflow.orchestrator.scheduler import BULK, lane_of
from stageflow.orchestrator.store import TERMINAL, JobStore
from stageflow.v1 import orchestrator_pb2

if TYPE_CHECKING:  # psycopg is only needed with PostgreSQL
    from stageflow.orchestrator.leases import JobLeases

Job = orchestrator_pb2.Job


def replica_leases(jobs: JobStore, lease_seconds: float, name: str = "") -> JobLeases | None:
    """The lease table of a job store several replicas can share (one with a
    PostgreSQL connection `pool`), as replica `name` (default host-pid-random,
    unique per process); None for a store only one process uses (SQLite)."""
    pool = getattr(jobs, "pool", None)
    if pool is None:
        if type(jobs).__name__ == "PostgresJobStore":  # never run one as if alone
            raise RuntimeError("the PostgreSQL job store must expose its connection `pool`")
        return None
    from stageflow.orchestrator.leases import JobLeases

    owner = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return JobLeases(pool, owner, lease_seconds)


class LeaseLost(RuntimeError):
    """The job's lease passed to another replica: this one must stop the job."""

    def __init__(self, job_id: str, fence: int) -> None:
        super().__init__(f"job {job_id}: fence {fence} is stale, another replica owns the job")
        self.job_id = job_id
        self.fence = fence


class Coordinator(Protocol):
    async def persist(self, job: Job) -> None:
        """Store `job` as its latest version (a stage boundary or an end state)."""
        ...

    def slot(self, service: str, priority: int) -> AbstractAsyncContextManager[None]:
        """Hold one of `service`'s call slots for the duration of a call."""
        ...


class LocalCoordinator:
    """One orchestrator: the store as is, the directory's in-process slots."""

    def __init__(self, jobs: JobStore, directory: StageDirectory) -> None:
        self._jobs = jobs
        self._directory = directory

    async def persist(self, job: Job) -> None:
        await self._jobs.update(job)

    def slot(self, service: str, priority: int) -> AbstractAsyncContextManager[None]:
        return self._directory.slot(service, priority)


class LeasedCoordinator:
    """Several orchestrators over PostgreSQL: fenced writes, global slots.

    The runner records the fence of each job it claimed (`own`) and forgets
    it when the job's task ends (`disown`); a write of a job this replica
    does not own raises LeaseLost."""

    def __init__(self, leases: JobLeases, directory: StageDirectory) -> None:
        self._leases = leases
        self._directory = directory
        self._fences: dict[str, int] = {}

    def own(self, job_id: str, fence: int) -> None:
        self._fences[job_id] = fence

    def disown(self, job_id: str, fence: int | None = None) -> None:
        """Forget the job's fence (with `fence`, only if it is still that one)."""
        if fence is None or self._fences.get(job_id) == fence:
            self._fences.pop(job_id, None)

    def fence(self, job_id: str) -> int | None:
        return self._fences.get(job_id)

    async def persist(self, job: Job) -> None:
        """Raises `LeaseLost` when another replica holds the job now (or this
        one already let it go)."""
        fence = self._fences.get(job.job_id)
        if fence is None:
            raise LeaseLost(job.job_id, 0)
        await self._leases.write(job, fence, final=job.state in TERMINAL)

    @contextlib.asynccontextmanager
    async def slot(self, service: str, priority: int) -> AsyncIterator[None]:
        # Lanes hold within this replica; the cluster-wide count in the database.
        async with self._directory.slot(service, priority):
            limit = self._directory.limit(service)
            if limit is None:
                yield
                return
            bulk = lane_of(priority) == BULK
            async with self._leases.slot(service, limit, bulk=bulk):
                yield
