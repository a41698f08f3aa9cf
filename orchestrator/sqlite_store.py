"""The SQLite `JobStore`: one row per job holding the whole serialized `Job`.

One connection, used only from a single worker thread: calls from the event
loop never block it on disk, and writes land in the order they were made
(a later state never loses to an earlier one still in flight).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from stageflow.orchestrator import migrations, store_sql
from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import Quota, TenantUsage
from stageflow.orchestrator.store import Cursor
from stageflow.v1 import orchestrator_pb2, stage_pb2

T = TypeVar("T")
SQL = store_sql.SQLITE


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A file of the releases before versioned migrations may lack columns
    that came later; version 1 expects them (its CREATEs are IF NOT EXISTS)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "jobs" in tables:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "tenant" not in columns:  # from before tenants: its jobs are tenant ''
            conn.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
    if "api_keys" in tables:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if "priority" not in columns:  # from before key priorities
            conn.execute("ALTER TABLE api_keys ADD COLUMN priority TEXT NOT NULL DEFAULT ''")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the latest schema in one transaction; its version after.
    Raises SchemaTooNew (and changes nothing) for a file of a newer release."""
    conn.execute("BEGIN IMMEDIATE")  # a second process on the file waits here
    try:
        conn.execute(migrations.VERSION_TABLE)
        current = conn.execute(SQL.schema_version).fetchone()[0]
        todo = migrations.pending("sqlite", current)
        if current == 0:
            _add_missing_columns(conn)
        for migration in todo:
            for statement in migrations.sqlite_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                SQL.record_version, (migration.version, migration.name, time.time_ns() // 1000)
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return migrations.latest("sqlite")


class SqliteJobStore:
    """`store.JobStore` over a SQLite file (or ":memory:"); the method contracts
    are documented there."""

    def __init__(self, path: Path | str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._conn: sqlite3.Connection = self._executor.submit(self._connect, str(path)).result()

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every statement below is its own atomic transaction.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # --- JobStore ---------------------------------------------------------

    async def create(
        self, job: orchestrator_pb2.Job, request_id: str = "", quota: Quota | None = None
    ) -> tuple[orchestrator_pb2.Job, bool]:
        """Insert `job`; with a `request_id` already used, return that job and False."""
        return await self._call(self._create, job, request_id, quota)

    async def get(self, job_id: str) -> orchestrator_pb2.Job | None:
        return await self._call(self._get, job_id)

    async def update(self, job: orchestrator_pb2.Job) -> None:
        """Replace the stored job (state and updated_at are taken from it)."""
        await self._call(self._update, job)

    async def list_jobs(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
    ) -> list[orchestrator_pb2.Job]:
        """Newest first; only jobs in `state`, of `tenant`, when given."""
        return [job for _, job in await self.list_page(page_size, state, tenant)]

    async def list_page(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
        after: Cursor | None = None,
    ) -> list[tuple[Cursor, orchestrator_pb2.Job]]:
        return await self._call(self._list_page, SQL.list_jobs(page_size, state, tenant, after))

    async def unfinished(self) -> list[orchestrator_pb2.Job]:
        """QUEUED and RUNNING jobs, oldest first (the order to resume them in)."""
        return await self._call(self._unfinished)

    async def add_version(
        self, previous: orchestrator_pb2.Job, latest: orchestrator_pb2.Job
    ) -> None:
        """Keep `previous` as an old version and make `latest` the job's row, atomically."""
        await self._call(self._add_version, previous, latest)

    async def versions(self, job_id: str) -> list[orchestrator_pb2.Job]:
        """The job's earlier versions, oldest first (the latest is `get`)."""
        return await self._call(self._versions, job_id)

    async def cache_get(self, key: str) -> stage_pb2.StageResult | None:
        return await self._call(self._cache_get, key)

    async def cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        await self._call(self._cache_put, key, stage, result)

    async def cache_delete(self, key: str) -> None:
        await self._call(self._cache_delete, key)

    async def create_key(self, key: ApiKey) -> None:
        await self._call(self._create_key, key)

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self._call(self._get_key, key_id)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        return await self._call(self._list_keys, tenant)

    async def revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        return await self._call(self._revoke_key, key_id, revoked_at)

    async def set_quota(self, tenant: str, quota: Quota) -> None:
        await self._call(self._set_quota, tenant, quota)

    async def get_quota(self, tenant: str) -> Quota | None:
        return await self._call(self._get_quota, tenant)

    async def usage(self, tenant: str, since: float) -> TenantUsage:
        return await self._call(self._usage, tenant, int(since * 1e6))

    async def healthy(self) -> bool:
        return True  # a local file: it is there as long as this process is

    async def close(self) -> None:
        await self._call(self._conn.close)
        self._executor.shutdown(wait=True)

    # --- worker-thread side -----------------------------------------------

    def _create(
        self, job: orchestrator_pb2.Job, request_id: str, quota: Quota | None
    ) -> tuple[orchestrator_pb2.Job, bool]:
        # One write transaction: the key lookup, the quota's counts and the
        # insert see no other writer in between (another process on the file
        # waits at BEGIN IMMEDIATE).
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if request_id:
                row = self._conn.execute(SQL.job_by_request, (job.tenant, request_id)).fetchone()
                if row is not None:
                    return store_sql.decode_job(row[0]), False
            if quota is not None and store_sql.needs_usage(quota):
                usage = self._usage(job.tenant, store_sql.window_start_us(job))
                store_sql.check_quota(quota, job, usage)
            self._conn.execute(SQL.insert_job, store_sql.job_row(job, request_id))
        return job, True

    def _get(self, job_id: str) -> orchestrator_pb2.Job | None:
        row = self._conn.execute(SQL.get_job, (job_id,)).fetchone()
        return None if row is None else store_sql.decode_job(row[0])

    def _update(self, job: orchestrator_pb2.Job) -> None:
        cur = self._conn.execute(SQL.update_job, store_sql.update_row(job))
        if cur.rowcount == 0:
            raise KeyError(f"no job {job.job_id!r} to update")

    def _list_page(
        self, query: tuple[str, tuple[object, ...]]
    ) -> list[tuple[Cursor, orchestrator_pb2.Job]]:
        return store_sql.decode_listed(self._conn.execute(*query))

    def _unfinished(self) -> list[orchestrator_pb2.Job]:
        rows = self._conn.execute(SQL.unfinished, store_sql.UNFINISHED_NAMES)
        return [store_sql.decode_job(row[0]) for row in rows]

    def _add_version(self, previous: orchestrator_pb2.Job, latest: orchestrator_pb2.Job) -> None:
        with self._conn:  # one transaction: no version is lost or doubled
            self._conn.execute("BEGIN")
            try:
                self._conn.execute(
                    SQL.insert_version,
                    (previous.job_id, previous.version, previous.SerializeToString()),
                )
            except sqlite3.IntegrityError:
                raise store_sql.version_taken(previous) from None
            self._update(latest)

    def _versions(self, job_id: str) -> list[orchestrator_pb2.Job]:
        rows = self._conn.execute(SQL.versions, (job_id,))
        return [store_sql.decode_job(row[0]) for row in rows]

    def _cache_get(self, key: str) -> stage_pb2.StageResult | None:
        row = self._conn.execute(SQL.cache_get, (key,)).fetchone()
        return None if row is None else store_sql.decode_result(row[0])

    def _cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        self._conn.execute(
            SQL.cache_put,
            (key, stage, result.output.key, time.time_ns() // 1000, result.SerializeToString()),
        )

    def _cache_delete(self, key: str) -> None:
        self._conn.execute(SQL.cache_delete, (key,))

    def _create_key(self, key: ApiKey) -> None:
        try:
            self._conn.execute(SQL.insert_key, store_sql.key_row(key))
        except sqlite3.IntegrityError:
            raise KeyError(f"key id {key.key_id!r} exists") from None

    def _get_key(self, key_id: str) -> ApiKey | None:
        row = self._conn.execute(SQL.get_key, (key_id,)).fetchone()
        return None if row is None else store_sql.decode_key(row)

    def _list_keys(self, tenant: str | None) -> list[ApiKey]:
        args = () if tenant is None else (tenant,)
        rows = self._conn.execute(SQL.list_keys(tenant is not None), args)
        return [store_sql.decode_key(row) for row in rows]

    def _set_quota(self, tenant: str, quota: Quota) -> None:
        self._conn.execute(
            SQL.set_quota, (tenant, quota.max_running, quota.max_queued, quota.per_minute)
        )

    def _get_quota(self, tenant: str) -> Quota | None:
        row = self._conn.execute(SQL.get_quota, (tenant,)).fetchone()
        return None if row is None else store_sql.decode_quota(row)

    def _usage(self, tenant: str, since: int) -> TenantUsage:
        counts = self._conn.execute(SQL.count_unfinished, (tenant, *store_sql.UNFINISHED_NAMES))
        recent = self._conn.execute(SQL.recent_created, (tenant, since))
        return store_sql.usage_of(counts.fetchall(), recent.fetchall())

    def _revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        self._conn.execute(SQL.revoke_key, (revoked_at, key_id))
        return self._get_key(key_id)
