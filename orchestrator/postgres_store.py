"""The PostgreSQL `JobStore`: the SQLite store's layout in a server several
orchestrator replicas share.

The same design as `sqlite_store` (one row per job holding the serialized
`Job`, with query columns; SQL and row mapping from `store_sql`): the Job
message is the one schema of a job, so a field added to it needs no
migration, and both stores stay one code path. The columns are only what
queries filter, order and lock on.

Connections come from a psycopg_pool `AsyncConnectionPool` (autocommit; a
method needing several statements opens a transaction). Every connection is
checked when taken from the pool, so after a PostgreSQL restart the broken
ones are dropped and the pool reconnects by itself, with backoff.

While the database cannot be reached:

- reads and submits raise `Unavailable` within `timeout_seconds` (the
  caller gets UNAVAILABLE and retries; a submit with a request id is
  idempotent, so a retry cannot double it);
- writes of a job's progress (`update`, `cache_put`) are retried for up to
  `write_retry_seconds`: they replace a whole row, so doing one twice is
  harmless, and a job that is running must not lose its state to a short
  outage.

Submit-time quotas are checked in the insert's transaction under a
transaction-scoped advisory lock per tenant (`SUBMIT_LOCK`, hashtext(tenant)),
so submits to different replicas are serialized per tenant and cannot
overshoot; migrations run under `MIGRATION_LOCK`, so replicas starting at
once apply each file once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from stageflow.core.errors import Unavailable
from stageflow.core.logging import get_logger
from stageflow.orchestrator import migrations, store_sql
from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import Quota, TenantUsage
from stageflow.orchestrator.store import Cursor
from stageflow.v1 import orchestrator_pb2, stage_pb2

T = TypeVar("T")
SQL = store_sql.POSTGRES
Connection = psycopg.AsyncConnection[TupleRow]
log = get_logger(__name__)

# Advisory lock keys of this schema (pg_advisory_xact_lock): one bigint for
# migrations; (SUBMIT_LOCK, hashtext(tenant)) for a tenant's submits.
MIGRATION_LOCK = 0x5354_4147_4546_4C01  # "STAGEFL" 01
SUBMIT_LOCK = 0x5346_0001
_RETRY_BASE_S = 0.2
_RETRY_CAP_S = 2.0
_HEALTH_TIMEOUT_S = 1.0


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return url.replace(parts.netloc, f"{user}:***@{netloc[2]}", 1)


def _unavailable(url: str, err: BaseException) -> Unavailable:
    return Unavailable(f"job database {redact(url)} unavailable ({type(err).__name__}: {err})")


class PostgresJobStore:
    """`store.JobStore` over a PostgreSQL database; the method contracts are
    documented there. Make one with `open` (it migrates the schema)."""

    def __init__(
        self, pool: AsyncConnectionPool[Connection], url: str, *, write_retry_seconds: float
    ) -> None:
        self._pool = pool
        self._url = url
        self._write_retry_seconds = write_retry_seconds

    @property
    def pool(self) -> AsyncConnectionPool[Connection]:
        """The connection pool, shared with the replica's lease layer
        (`coordination.replica_leases`): one set of connections per process."""
        return self._pool

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        pool_size: int = 10,
        timeout_seconds: float = 5.0,
        write_retry_seconds: float = 120.0,
    ) -> PostgresJobStore:
        """Connect (a password in `url`, given here, or libpq's PGPASSWORD /
        PGPASSFILE), migrate to the latest schema, and return the store.
        Raises Unavailable when the server does not answer within
        `timeout_seconds`, `migrations.SchemaTooNew` for a newer schema."""
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(timeout_seconds)),
            "application_name": "stageflow-orchestrator",
        }
        if password:
            kwargs["password"] = password
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout_seconds,
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=max(300.0, write_retry_seconds),
            name="jobstore",
        )
        try:
            await pool.open(wait=True, timeout=timeout_seconds)
        except psycopg.OperationalError as err:
            await pool.close()
            raise _unavailable(url, err) from None
        store = cls(pool, url, write_retry_seconds=write_retry_seconds)
        try:
            version = await store.migrate()
        except BaseException:
            await pool.close()
            raise
        log.info("jobstore.open", backend="postgres", url=redact(url), schema_version=version)
        return store

    async def migrate(self) -> int:
        """Bring the database to the latest schema in one transaction, under
        the migration lock (a replica starting at the same time waits, then
        finds nothing to do); the version after."""

        async def run(conn: Connection) -> int:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(migrations.VERSION_TABLE)
                current = await _scalar(conn, SQL.schema_version)
                for migration in migrations.pending("postgres", current):
                    await conn.execute(migration.sql)
                    await conn.execute(
                        SQL.record_version,
                        (migration.version, migration.name, time.time_ns() // 1000),
                    )
                    log.info("jobstore.migrated", version=migration.version, name=migration.name)
            return migrations.latest("postgres")

        return await self._read(run)

    # --- connections ------------------------------------------------------

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection; Unavailable when the database is away."""
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except psycopg.OperationalError as err:  # PoolTimeout and lost connections alike
            raise _unavailable(self._url, err) from None

    async def _write(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """`_read` for an idempotent write, retried through an outage of up to
        `write_retry_seconds` (with backoff) before raising Unavailable."""
        deadline = time.monotonic() + self._write_retry_seconds
        bound = _RETRY_BASE_S
        while True:
            try:
                return await self._read(fn)
            except Unavailable as err:
                if time.monotonic() + bound > deadline:
                    raise
                log.warning("jobstore.write_retry", error=err.message)
                await asyncio.sleep(random.uniform(bound / 2, bound))
                bound = min(bound * 2, _RETRY_CAP_S)

    # --- JobStore ---------------------------------------------------------

    async def create(
        self, job: orchestrator_pb2.Job, request_id: str = "", quota: Quota | None = None
    ) -> tuple[orchestrator_pb2.Job, bool]:
        async def run(conn: Connection) -> tuple[orchestrator_pb2.Job, bool]:
            async with conn.transaction():
                if request_id or store_sql.needs_usage(quota):
                    # Submits of one tenant, from every replica, one at a time.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SUBMIT_LOCK, job.tenant)
                    )
                if request_id:
                    row = await _one(conn, SQL.job_by_request, (job.tenant, request_id))
                    if row is not None:
                        return store_sql.decode_job(row[0]), False
                if quota is not None and store_sql.needs_usage(quota):
                    usage = await _usage(conn, job.tenant, store_sql.window_start_us(job))
                    store_sql.check_quota(quota, job, usage)
                try:
                    await conn.execute(SQL.insert_job, store_sql.job_row(job, request_id))
                except psycopg.errors.UniqueViolation:
                    raise KeyError(f"job {job.job_id!r} exists") from None
            return job, True

        return await self._read(run)

    async def get(self, job_id: str) -> orchestrator_pb2.Job | None:
        row = await self._read(lambda conn: _one(conn, SQL.get_job, (job_id,)))
        return None if row is None else store_sql.decode_job(row[0])

    async def update(self, job: orchestrator_pb2.Job) -> None:
        async def run(conn: Connection) -> int:
            cur = await conn.execute(SQL.update_job, store_sql.update_row(job))
            return cur.rowcount

        if await self._write(run) == 0:
            raise KeyError(f"no job {job.job_id!r} to update")

    async def list_jobs(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
    ) -> list[orchestrator_pb2.Job]:
        return [job for _, job in await self.list_page(page_size, state, tenant)]

    async def list_page(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
        after: Cursor | None = None,
    ) -> list[tuple[Cursor, orchestrator_pb2.Job]]:
        sql, args = SQL.list_jobs(page_size, state, tenant, after)
        return store_sql.decode_listed(await self._read(lambda conn: _all(conn, sql, args)))

    async def unfinished(self) -> list[orchestrator_pb2.Job]:
        rows = await self._read(lambda conn: _all(conn, SQL.unfinished, store_sql.UNFINISHED_NAMES))
        return [store_sql.decode_job(row[0]) for row in rows]

    async def add_version(
        self, previous: orchestrator_pb2.Job, latest: orchestrator_pb2.Job
    ) -> None:
        async def run(conn: Connection) -> None:
            # No version is lost or doubled: two replicas rerunning the same
            # version both insert its (job_id, version) row; the second waits
            # on the first's transaction and then hits the primary key.
            async with conn.transaction():
                try:
                    await conn.execute(
                        SQL.insert_version,
                        (previous.job_id, previous.version, previous.SerializeToString()),
                    )
                except psycopg.errors.UniqueViolation:
                    raise store_sql.version_taken(previous) from None
                cur = await conn.execute(SQL.update_job, store_sql.update_row(latest))
                if cur.rowcount == 0:
                    raise KeyError(f"no job {latest.job_id!r} to update")

        await self._read(run)  # not retried: a commit whose answer was lost would double it

    async def versions(self, job_id: str) -> list[orchestrator_pb2.Job]:
        rows = await self._read(lambda conn: _all(conn, SQL.versions, (job_id,)))
        return [store_sql.decode_job(row[0]) for row in rows]

    async def cache_get(self, key: str) -> stage_pb2.StageResult | None:
        row = await self._read(lambda conn: _one(conn, SQL.cache_get, (key,)))
        return None if row is None else store_sql.decode_result(row[0])

    async def cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        args = (key, stage, result.output.key, time.time_ns() // 1000, result.SerializeToString())
        await self._write(lambda conn: conn.execute(SQL.cache_put, args))

    async def cache_delete(self, key: str) -> None:
        await self._write(lambda conn: conn.execute(SQL.cache_delete, (key,)))

    async def create_key(self, key: ApiKey) -> None:
        async def run(conn: Connection) -> None:
            try:
                await conn.execute(SQL.insert_key, store_sql.key_row(key))
            except psycopg.errors.UniqueViolation:
                raise KeyError(f"key id {key.key_id!r} exists") from None

        await self._read(run)

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._read(lambda conn: _one(conn, SQL.get_key, (key_id,)))
        return None if row is None else store_sql.decode_key(row)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        args = () if tenant is None else (tenant,)
        sql = SQL.list_keys(tenant is not None)
        rows = await self._read(lambda conn: _all(conn, sql, args))
        return [store_sql.decode_key(row) for row in rows]

    async def revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        async def run(conn: Connection) -> TupleRow | None:
            await conn.execute(SQL.revoke_key, (revoked_at, key_id))
            return await _one(conn, SQL.get_key, (key_id,))

        row = await self._read(run)
        return None if row is None else store_sql.decode_key(row)

    async def set_quota(self, tenant: str, quota: Quota) -> None:
        args = (tenant, quota.max_running, quota.max_queued, quota.per_minute)
        await self._read(lambda conn: conn.execute(SQL.set_quota, args))

    async def get_quota(self, tenant: str) -> Quota | None:
        row = await self._read(lambda conn: _one(conn, SQL.get_quota, (tenant,)))
        return None if row is None else store_sql.decode_quota(row)

    async def usage(self, tenant: str, since: float) -> TenantUsage:
        return await self._read(lambda conn: _usage(conn, tenant, int(since * 1e6)))

    async def healthy(self) -> bool:
        try:
            async with self._pool.connection(timeout=_HEALTH_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    async def close(self) -> None:
        await self._pool.close()


async def _one(conn: Connection, sql: str, args: tuple[object, ...]) -> TupleRow | None:
    cur = await conn.execute(sql, args)
    return await cur.fetchone()


async def _all(conn: Connection, sql: str, args: tuple[object, ...]) -> list[TupleRow]:
    cur = await conn.execute(sql, args)
    return await cur.fetchall()


async def _scalar(conn: Connection, sql: str) -> int:
    row = await _one(conn, sql, ())
    return 0 if row is None else int(row[0])


async def _usage(conn: Connection, tenant: str, since_us: int) -> TenantUsage:
    counts = await _all(conn, SQL.count_unfinished, (tenant, *store_sql.UNFINISHED_NAMES))
    recent = await _all(conn, SQL.recent_created, (tenant, since_us))
    return store_sql.usage_of(counts, recent)
