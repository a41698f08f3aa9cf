"""A job database for lease tests on a real PostgreSQL server.

Each `JobLeases` made by the `replicas` fixture has its own connection pool
and owner name: as far as the database can tell, each is an orchestrator
replica. The `jobs` table is the columns of migration 0001 the fenced write
touches; the lease tables come from the real migration file (0002_leases.sql).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from stageflow.orchestrator.leases import JobLeases
from stageflow.v1 import orchestrator_pb2 as pb

LEASES_SQL = (
    Path(__file__).resolve().parents[2] / "orchestrator/migrations/postgres/0002_leases.sql"
).read_text()
JOBS_SQL = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at BIGINT NOT NULL, job BYTEA NOT NULL
)
"""
LEASE_SECONDS = 1.0

# make(n, lease_seconds=LEASE_SECONDS): n replicas' JobLeases
Replicas = Callable[..., Awaitable[list[JobLeases]]]


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[Replicas]:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(JOBS_SQL)
        await conn.execute(LEASES_SQL)
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


def job(job_id: str, created_us: int, *, bulk: bool = False, tenant: str = "") -> pb.Job:
    out = pb.Job(job_id=job_id, state=pb.JOB_STATE_QUEUED, tenant=tenant)
    out.created_at.FromMicroseconds(created_us)
    out.updated_at.FromMicroseconds(created_us)
    if bulk:
        out.request.priority = pb.PRIORITY_BULK
    return out


async def insert(leases: JobLeases, jobs: list[pb.Job], tenant_limit: int | None = None) -> None:
    async with leases._pool.connection() as conn:
        for j in jobs:
            await conn.execute(
                "INSERT INTO jobs (job_id, state, updated_at, job) VALUES (%s, %s, %s, %s)",
                (
                    j.job_id,
                    "JOB_STATE_QUEUED",
                    j.updated_at.ToMicroseconds(),
                    j.SerializeToString(),
                ),
            )
    for j in jobs:
        await leases.enqueue(j, tenant_limit)


async def stored(leases: JobLeases, job_id: str) -> pb.Job:
    async with leases._pool.connection() as conn:
        row = await (
            await conn.execute("SELECT job FROM jobs WHERE job_id = %s", (job_id,))
        ).fetchone()
        assert row is not None
        return pb.Job.FromString(row[0])
