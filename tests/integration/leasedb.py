"""A job database for lease tests on a real PostgreSQL server.

Each `JobLeases` made by the `replicas` fixture has its own connection pool
and owner name: as far as the database can tell, each is an orchestrator
replica. The schema is the real one: the database is migrated as the
orchestrator does it (`PostgresJobStore.open`), and jobs are written and read
through the store over each replica's own pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stageflow.orchestrator.leases import JobLeases
from stageflow.orchestrator.postgres_store import PostgresJobStore
from stageflow.v1 import orchestrator_pb2 as pb

LEASE_SECONDS = 1.0

# make(n, lease_seconds=LEASE_SECONDS): n replicas' JobLeases
Replicas = Callable[..., Awaitable[list[JobLeases]]]


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[Replicas]:
    migrated = await PostgresJobStore.open(pg_url, pool_size=1)  # every migration, in order
    await migrated.close()
    pools: list[AsyncConnectionPool[psycopg.AsyncConnection]] = []

    async def make(n: int, lease_seconds: float = LEASE_SECONDS) -> list[JobLeases]:
        out = []
        for i in range(n):
            pool: AsyncConnectionPool[psycopg.AsyncConnection] = AsyncConnectionPool(
                pg_url, kwargs={"autocommit": True}, min_size=1, max_size=4, open=False
            )
            await pool.open(wait=True)
            pools.append(pool)
            out.append(JobLeases(pool, f"replica-{len(pools)}-{i}", lease_seconds))
        return out

    yield make
    for pool in pools:
        await pool.close()


def _store(leases: JobLeases) -> PostgresJobStore:
    """The job store over this replica's own pool, as an orchestrator shares it."""
    return PostgresJobStore(leases._pool, "lease-test", write_retry_seconds=0.0)


def job(job_id: str, created_us: int, *, bulk: bool = False, tenant: str = "") -> pb.Job:
    out = pb.Job(job_id=job_id, state=pb.JOB_STATE_QUEUED, tenant=tenant)
    out.created_at.FromMicroseconds(created_us)
    out.updated_at.FromMicroseconds(created_us)
    if bulk:
        out.request.priority = pb.PRIORITY_BULK
    return out


async def insert(leases: JobLeases, jobs: list[pb.Job], tenant_limit: int | None = None) -> None:
    for j in jobs:
        _, created = await _store(leases).create(j)
        assert created, j.job_id
    for j in jobs:
        await leases.enqueue(j, tenant_limit)


async def stored(leases: JobLeases, job_id: str) -> pb.Job:
    found = await _store(leases).get(job_id)
    assert found is not None, job_id
    return found
