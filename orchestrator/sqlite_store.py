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

from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import Quota, TenantUsage
from stageflow.orchestrator.store import UNFINISHED
from stageflow.v1 import orchestrator_pb2, stage_pb2

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id     TEXT PRIMARY KEY,
    request_id TEXT NOT NULL DEFAULT '',
    tenant     TEXT NOT NULL DEFAULT '',  -- Job.tenant; '' with authentication off
    state      TEXT NOT NULL,     -- JobState name, readable from the sqlite3 shell
    created_at INTEGER NOT NULL,  -- unix microseconds
    updated_at INTEGER NOT NULL,
    job        BLOB NOT NULL      -- serialized stageflow.v1.Job
);
-- Earlier versions of rerun jobs; the jobs row always holds the latest one.
CREATE TABLE IF NOT EXISTS job_versions (
    job_id  TEXT NOT NULL,
    version INTEGER NOT NULL,
    job     BLOB NOT NULL,        -- serialized stageflow.v1.Job, as it finished
    PRIMARY KEY (job_id, version)
);
-- The stage cache: content address of a stage run -> what it produced.
CREATE TABLE IF NOT EXISTS stage_cache (
    key        TEXT PRIMARY KEY,  -- stageflow.orchestrator.cache.cache_key
    stage      TEXT NOT NULL,
    output_key TEXT NOT NULL,     -- readable from the sqlite3 shell
    created_at INTEGER NOT NULL,  -- unix microseconds
    result     BLOB NOT NULL      -- serialized stageflow.v1.StageResult (output, model, timing)
);
-- API keys (stageflow.orchestrator.auth): the keyed hash, never the key.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    key_hash   TEXT NOT NULL,     -- hex HMAC-SHA256(server secret, key)
    created_at INTEGER NOT NULL,  -- unix microseconds
    revoked_at INTEGER NOT NULL DEFAULT 0,
    priority   TEXT NOT NULL DEFAULT ''  -- '', 'interactive' or 'bulk'
);
-- Per-tenant limits (stageflow.orchestrator.quotas); NULL: no limit.
CREATE TABLE IF NOT EXISTS tenant_quotas (
    tenant      TEXT PRIMARY KEY,
    max_running INTEGER,
    max_queued  INTEGER,
    per_minute  INTEGER
);
"""

# After the tables (and the migration of a file written before tenants).
_INDEXES = """
DROP INDEX IF EXISTS jobs_request_id;
-- Idempotent submit: one job per non-empty caller key, per tenant.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request_id
    ON jobs (tenant, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at);
"""

_KEY_COLUMNS = "key_id, tenant, prefix, key_hash, created_at, revoked_at, priority"


def _state_name(state: orchestrator_pb2.JobState) -> str:
    return orchestrator_pb2.JobState.Name(state)


def _decode(blob: bytes) -> orchestrator_pb2.Job:
    return orchestrator_pb2.Job.FromString(blob)


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
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "tenant" not in columns:  # a file from before tenants: its jobs are tenant ''
            conn.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
        key_columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if "priority" not in key_columns:  # a file from before key priorities
            conn.execute("ALTER TABLE api_keys ADD COLUMN priority TEXT NOT NULL DEFAULT ''")
        conn.executescript(_INDEXES)
        return conn

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # --- JobStore ---------------------------------------------------------

    async def create(
        self, job: orchestrator_pb2.Job, request_id: str = ""
    ) -> tuple[orchestrator_pb2.Job, bool]:
        """Insert `job`; with a `request_id` already used, return that job and False."""
        return await self._call(self._create, job, request_id)

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
        return await self._call(self._list_jobs, page_size, state, tenant)

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

    async def close(self) -> None:
        await self._call(self._conn.close)
        self._executor.shutdown(wait=True)

    # --- worker-thread side -----------------------------------------------

    def _create(
        self, job: orchestrator_pb2.Job, request_id: str
    ) -> tuple[orchestrator_pb2.Job, bool]:
        try:
            self._conn.execute(
                "INSERT INTO jobs (job_id, request_id, tenant, state, created_at, updated_at, job)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    request_id,
                    job.tenant,
                    _state_name(job.state),
                    job.created_at.ToMicroseconds(),
                    job.updated_at.ToMicroseconds(),
                    job.SerializeToString(),
                ),
            )
        except sqlite3.IntegrityError:
            if not request_id:
                raise
            row = self._conn.execute(
                "SELECT job FROM jobs WHERE tenant = ? AND request_id = ?", (job.tenant, request_id)
            ).fetchone()
            if row is None:  # the conflict was on job_id, not on the caller's key
                raise
            return _decode(row[0]), False
        return job, True

    def _get(self, job_id: str) -> orchestrator_pb2.Job | None:
        row = self._conn.execute("SELECT job FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _decode(row[0])

    def _update(self, job: orchestrator_pb2.Job) -> None:
        cur = self._conn.execute(
            "UPDATE jobs SET state = ?, updated_at = ?, job = ? WHERE job_id = ?",
            (
                _state_name(job.state),
                job.updated_at.ToMicroseconds(),
                job.SerializeToString(),
                job.job_id,
            ),
        )
        if cur.rowcount == 0:
            raise KeyError(f"no job {job.job_id!r} to update")

    def _list_jobs(
        self, page_size: int, state: orchestrator_pb2.JobState | None, tenant: str | None
    ) -> list[orchestrator_pb2.Job]:
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(_state_name(state))
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._conn.execute(
            f"SELECT job FROM jobs {clause}ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*args, page_size),
        )
        return [_decode(row[0]) for row in rows]

    def _unfinished(self) -> list[orchestrator_pb2.Job]:
        names = [_state_name(s) for s in UNFINISHED]
        rows = self._conn.execute(
            "SELECT job FROM jobs WHERE state IN (?, ?) ORDER BY created_at, rowid", names
        )
        return [_decode(row[0]) for row in rows]

    def _add_version(self, previous: orchestrator_pb2.Job, latest: orchestrator_pb2.Job) -> None:
        with self._conn:  # one transaction: no version is lost or doubled
            self._conn.execute("BEGIN")
            self._conn.execute(
                "INSERT INTO job_versions (job_id, version, job) VALUES (?, ?, ?)",
                (previous.job_id, previous.version, previous.SerializeToString()),
            )
            self._update(latest)

    def _versions(self, job_id: str) -> list[orchestrator_pb2.Job]:
        rows = self._conn.execute(
            "SELECT job FROM job_versions WHERE job_id = ? ORDER BY version", (job_id,)
        )
        return [_decode(row[0]) for row in rows]

    def _cache_get(self, key: str) -> stage_pb2.StageResult | None:
        row = self._conn.execute("SELECT result FROM stage_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else stage_pb2.StageResult.FromString(row[0])

    def _cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO stage_cache (key, stage, output_key, created_at, result)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, stage, result.output.key, time.time_ns() // 1000, result.SerializeToString()),
        )

    def _cache_delete(self, key: str) -> None:
        self._conn.execute("DELETE FROM stage_cache WHERE key = ?", (key,))

    def _create_key(self, key: ApiKey) -> None:
        try:
            self._conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key_id,
                    key.tenant,
                    key.prefix,
                    key.key_hash,
                    key.created_at,
                    key.revoked_at,
                    key.priority,
                ),
            )
        except sqlite3.IntegrityError:
            raise KeyError(f"key id {key.key_id!r} exists") from None

    def _get_key(self, key_id: str) -> ApiKey | None:
        row = self._conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return None if row is None else ApiKey(*row)

    def _list_keys(self, tenant: str | None) -> list[ApiKey]:
        if tenant is None:
            rows = self._conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        else:
            rows = self._conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at",
                (tenant,),
            )
        return [ApiKey(*row) for row in rows]

    def _set_quota(self, tenant: str, quota: Quota) -> None:
        self._conn.execute(
            "INSERT INTO tenant_quotas (tenant, max_running, max_queued, per_minute) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET "
            "max_running = excluded.max_running, max_queued = excluded.max_queued, "
            "per_minute = excluded.per_minute",
            (tenant, quota.max_running, quota.max_queued, quota.per_minute),
        )

    def _get_quota(self, tenant: str) -> Quota | None:
        row = self._conn.execute(
            "SELECT max_running, max_queued, per_minute FROM tenant_quotas WHERE tenant = ?",
            (tenant,),
        ).fetchone()
        return None if row is None else Quota(*row)

    def _usage(self, tenant: str, since: int) -> TenantUsage:
        counts = dict(
            self._conn.execute(
                "SELECT state, count(*) FROM jobs WHERE tenant = ? AND state IN (?, ?) "
                "GROUP BY state",
                (tenant, *(_state_name(s) for s in UNFINISHED)),
            ).fetchall()
        )
        recent = self._conn.execute(
            "SELECT created_at FROM jobs WHERE tenant = ? AND created_at > ? ORDER BY created_at",
            (tenant, since),
        ).fetchall()
        return TenantUsage(
            queued=counts.get(_state_name(orchestrator_pb2.JOB_STATE_QUEUED), 0),
            running=counts.get(_state_name(orchestrator_pb2.JOB_STATE_RUNNING), 0),
            recent=tuple(row[0] / 1e6 for row in recent),
        )

    def _revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        self._conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at = 0",
            (revoked_at, key_id),
        )
        return self._get_key(key_id)
