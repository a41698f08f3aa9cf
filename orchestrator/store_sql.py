"""The SQL and row mapping the SQLite and PostgreSQL job stores share.

Both stores keep one layout (see migrations/): a job is one row holding the
whole serialized `Job`, plus the columns queries filter and sort on (state,
tenant, times). The statements here are written once with `?` placeholders;
`Dialect` names what differs: the placeholder (psycopg's `%s`) and the
column of the insert order that breaks ties of created_at (SQLite's rowid,
PostgreSQL's identity `seq`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from stageflow.core.errors import FailedPrecondition
from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import WINDOW_SECONDS, Quota, TenantUsage, check_submit
from stageflow.orchestrator.store import UNFINISHED, Cursor
from stageflow.v1 import orchestrator_pb2, stage_pb2

Job = orchestrator_pb2.Job

KEY_COLUMNS = "key_id, tenant, prefix, key_hash, created_at, revoked_at, priority"
QUOTA_COLUMNS = "max_running, max_queued, per_minute"
_QUEUED = orchestrator_pb2.JobState.Name(orchestrator_pb2.JOB_STATE_QUEUED)
_RUNNING = orchestrator_pb2.JobState.Name(orchestrator_pb2.JOB_STATE_RUNNING)


def state_name(state: orchestrator_pb2.JobState) -> str:
    return orchestrator_pb2.JobState.Name(state)


UNFINISHED_NAMES = tuple(state_name(s) for s in UNFINISHED)


def version_taken(previous: Job) -> FailedPrecondition:
    """What `add_version` raises when `previous`'s version is already kept:
    another rerun of the same version won the race (on another replica)."""
    return FailedPrecondition(
        f"job {previous.job_id} was rerun meanwhile (version {previous.version} is already "
        "kept); get the job and rerun its latest version once it has finished"
    )


def decode_job(blob: bytes) -> Job:
    return Job.FromString(bytes(blob))


def decode_listed(rows: Iterable[Sequence[Any]]) -> list[tuple[Cursor, Job]]:
    """The rows of `Dialect.list_jobs`: each job with its place in the order."""
    return [((int(row[1]), int(row[2])), decode_job(row[0])) for row in rows]


def decode_result(blob: bytes) -> stage_pb2.StageResult:
    return stage_pb2.StageResult.FromString(bytes(blob))


def job_row(job: Job, request_id: str) -> tuple[object, ...]:
    """Parameters of INSERT_JOB."""
    return (
        job.job_id,
        request_id,
        job.tenant,
        state_name(job.state),
        job.created_at.ToMicroseconds(),
        job.updated_at.ToMicroseconds(),
        job.SerializeToString(),
    )


def update_row(job: Job) -> tuple[object, ...]:
    """Parameters of UPDATE_JOB."""
    return (
        state_name(job.state),
        job.updated_at.ToMicroseconds(),
        job.SerializeToString(),
        job.job_id,
    )


def key_row(key: ApiKey) -> tuple[object, ...]:
    return (
        key.key_id,
        key.tenant,
        key.prefix,
        key.key_hash,
        key.created_at,
        key.revoked_at,
        key.priority,
    )


def decode_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(*row)


def decode_quota(row: Sequence[Any]) -> Quota:
    return Quota(*row)


def usage_of(counts: Iterable[Sequence[Any]], recent: Iterable[Sequence[Any]]) -> TenantUsage:
    """From the rows of COUNT_UNFINISHED and RECENT_CREATED."""
    by_state = {row[0]: int(row[1]) for row in counts}
    return TenantUsage(
        queued=by_state.get(_QUEUED, 0),
        running=by_state.get(_RUNNING, 0),
        recent=tuple(row[0] / 1e6 for row in recent),
    )


def submit_now(job: Job) -> float:
    """The time a quota is checked at: the job's own submit time (unix seconds)."""
    return job.created_at.ToMicroseconds() / 1e6


def window_start_us(job: Job) -> int:
    return int((submit_now(job) - WINDOW_SECONDS) * 1e6)


def check_quota(quota: Quota, job: Job, usage: TenantUsage) -> None:
    """Raise ResourceExhausted when `job` would take its tenant past `quota`."""
    check_submit(quota, usage, submit_now(job))


def needs_usage(quota: Quota | None) -> bool:
    return quota is not None and (quota.max_queued is not None or quota.per_minute is not None)


@dataclass(frozen=True)
class Dialect:
    """What the two stores' SQL differs in."""

    placeholder: str  # "?" or "%s"
    insert_order: str  # the column that orders rows of equal created_at by insert

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    @cached_property
    def insert_job(self) -> str:
        return self._sql(
            "INSERT INTO jobs (job_id, request_id, tenant, state, created_at, updated_at, job)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

    @cached_property
    def job_by_request(self) -> str:
        return self._sql("SELECT job FROM jobs WHERE tenant = ? AND request_id = ?")

    @cached_property
    def get_job(self) -> str:
        return self._sql("SELECT job FROM jobs WHERE job_id = ?")

    @cached_property
    def update_job(self) -> str:
        return self._sql("UPDATE jobs SET state = ?, updated_at = ?, job = ? WHERE job_id = ?")

    def list_jobs(
        self,
        page_size: int,
        state: orchestrator_pb2.JobState | None,
        tenant: str | None,
        after: Cursor | None,
    ) -> tuple[str, tuple[object, ...]]:
        """The (sql, args) of a page of jobs newest first, each row (job,
        created_at, insert order); only `state`'s and `tenant`'s when given,
        only those after `after` (keyset: the row order is total)."""
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("state = ?")
            args.append(state_name(state))
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        order = self.insert_order
        if after is not None:
            where.append(f"(created_at < ? OR (created_at = ? AND {order} < ?))")
            args.extend((after[0], after[0], after[1]))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = self._sql(
            f"SELECT job, created_at, {order} FROM jobs {clause}"
            f"ORDER BY created_at DESC, {order} DESC LIMIT ?"
        )
        return sql, (*args, page_size)

    @cached_property
    def unfinished(self) -> str:
        return self._sql(
            f"SELECT job FROM jobs WHERE state IN (?, ?) ORDER BY created_at, {self.insert_order}"
        )

    @cached_property
    def insert_version(self) -> str:
        return self._sql("INSERT INTO job_versions (job_id, version, job) VALUES (?, ?, ?)")

    @cached_property
    def versions(self) -> str:
        return self._sql("SELECT job FROM job_versions WHERE job_id = ? ORDER BY version")

    @cached_property
    def cache_get(self) -> str:
        return self._sql("SELECT result FROM stage_cache WHERE key = ?")

    @cached_property
    def cache_put(self) -> str:
        return self._sql(
            "INSERT INTO stage_cache (key, stage, output_key, created_at, result)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET stage = excluded.stage,"
            " output_key = excluded.output_key, created_at = excluded.created_at,"
            " result = excluded.result"
        )

    @cached_property
    def cache_delete(self) -> str:
        return self._sql("DELETE FROM stage_cache WHERE key = ?")

    @cached_property
    def insert_key(self) -> str:
        return self._sql(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)")

    @cached_property
    def get_key(self) -> str:
        return self._sql(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?")

    def list_keys(self, tenant: bool) -> str:
        where = "WHERE tenant = ? " if tenant else ""
        return self._sql(f"SELECT {KEY_COLUMNS} FROM api_keys {where}ORDER BY created_at, key_id")

    @cached_property
    def revoke_key(self) -> str:
        return self._sql("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at = 0")

    @cached_property
    def set_quota(self) -> str:
        return self._sql(
            f"INSERT INTO tenant_quotas (tenant, {QUOTA_COLUMNS}) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant) DO UPDATE SET max_running = excluded.max_running,"
            " max_queued = excluded.max_queued, per_minute = excluded.per_minute"
        )

    @cached_property
    def get_quota(self) -> str:
        return self._sql(f"SELECT {QUOTA_COLUMNS} FROM tenant_quotas WHERE tenant = ?")

    @cached_property
    def count_unfinished(self) -> str:
        return self._sql(
            "SELECT state, count(*) FROM jobs WHERE tenant = ? AND state IN (?, ?) GROUP BY state"
        )

    @cached_property
    def recent_created(self) -> str:
        return self._sql(
            "SELECT created_at FROM jobs WHERE tenant = ? AND created_at > ? ORDER BY created_at"
        )

    @cached_property
    def schema_version(self) -> str:
        return "SELECT coalesce(max(version), 0) FROM schema_version"

    @cached_property
    def record_version(self) -> str:
        return self._sql("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)")


SQLITE = Dialect(placeholder="?", insert_order="rowid")
POSTGRES = Dialect(placeholder="%s", insert_order="seq")
