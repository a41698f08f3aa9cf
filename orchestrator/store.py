"""What the orchestrator needs from a job store, whatever holds the rows.

`JobStore` is the only store type the runner, the stage cache and the entry
point's wiring depend on: the SQLite store (`sqlite_store.SqliteJobStore`,
one orchestrator) implements it today, and a PostgreSQL store for several
orchestrator replicas fills the same contract without the runner changing.

The store holds four things: the latest version of every job (a whole
serialized `Job`, with its state, tenant and timestamps as query columns), the
earlier versions of rerun jobs, the stage cache's entries, and the API keys
(`auth.ApiKey`: hashes, never keys). Every method is a
coroutine that must not block the event loop. A store whose database cannot be
reached raises `core.errors.Unavailable` (UNAVAILABLE to a caller), never
hangs.

`open_job_store(url)` opens the one a `job_store_url` names: `sqlite:///PATH`
(relative PATH; `sqlite:////abs/path`) or `postgresql://...`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import Quota, TenantUsage
from stageflow.v1 import orchestrator_pb2, stage_pb2

Job = orchestrator_pb2.Job

# A listed job's place in the newest-first order: (created_at in unix
# microseconds, insert order), the second breaking ties of the first.
Cursor = tuple[int, int]
# States a job is left in only while some orchestrator owns it: on start-up
# these are resumed (`JobStore.unfinished`).
UNFINISHED = (orchestrator_pb2.JOB_STATE_QUEUED, orchestrator_pb2.JOB_STATE_RUNNING)
# States a job never leaves (until a rerun makes a new version of it).
TERMINAL = frozenset(
    {
        orchestrator_pb2.JOB_STATE_SUCCEEDED,
        orchestrator_pb2.JOB_STATE_FAILED,
        orchestrator_pb2.JOB_STATE_CANCELLED,
    }
)


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:16]}"


async def open_job_store(
    url: str,
    *,
    password: str | None = None,
    pool_size: int = 10,
    timeout_seconds: float = 5.0,
) -> JobStore:
    """The store `url` names, its schema migrated to the latest version.
    Raises ValueError for another scheme, `migrations.SchemaTooNew` for a
    database of a newer release, Unavailable when it cannot be reached."""
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from stageflow.orchestrator.sqlite_store import SqliteJobStore

        return await asyncio.to_thread(SqliteJobStore, sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from stageflow.orchestrator.postgres_store import PostgresJobStore

        return await PostgresJobStore.open(
            url, password=password, pool_size=pool_size, timeout_seconds=timeout_seconds
        )
    raise ValueError(f"job_store_url: expected sqlite:///PATH or postgresql://..., got {scheme}://")


def sqlite_path(url: str) -> str:
    """The file of a sqlite:/// URL (sqlite:///rel/path, sqlite:////abs/path, sqlite:///:memory:)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError("job_store_url: a SQLite URL is sqlite:///PATH (three slashes)")
    return url.removeprefix("sqlite:///")


class JobStore(Protocol):
    """Durable job state. Contracts every implementation keeps:

    - Each call is atomic and its effect is visible to every call started after
      it returned (the runner awaits each write before the next one, so writes
      of one job land in the order they were made).
    - Unknown ids are not errors when reading: `get` returns None and
      `versions` an empty list; writing one (`update`, `add_version`) raises
      KeyError.
    - Jobs come back equal (protobuf `==`) to what was written.
    """

    async def create(
        self, job: Job, request_id: str = "", quota: Quota | None = None
    ) -> tuple[Job, bool]:
        """Insert `job` and return it with True. With a non-empty `request_id`
        already used by a stored job of the same tenant (`job.tenant`), insert
        nothing and return that job with False (idempotent submit; the check
        and the insert are one atomic step, so two concurrent submits with one
        key create one job). An empty key is never a duplicate; another
        tenant's use of the same key is not either.

        With a `quota`, a new job is first checked against its tenant's
        queued and per-minute limits (`quotas.check_submit` at
        `job.created_at`, over the stored jobs): over them, nothing is
        inserted and ResourceExhausted is raised. The check and the insert
        are one atomic step across every process on the store, so concurrent
        submits, from any number of orchestrators, never overshoot. A
        duplicate `request_id` returns its job before any quota check (a
        retried submit that was accepted is not refused)."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The latest version of the job, or None when no job has that id."""
        ...

    async def update(self, job: Job) -> None:
        """Replace the stored latest version of `job.job_id` with `job` (its
        `state` and `updated_at` are the new query columns). Raises KeyError
        when no such job is stored."""
        ...

    async def list_jobs(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
    ) -> list[Job]:
        """At most `page_size` jobs, newest `created_at` first (ties: the later
        insert first); only those in `state` when it is given, only those of
        `tenant` (`Job.tenant`) when it is given."""
        ...

    async def list_page(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
        after: Cursor | None = None,
    ) -> list[tuple[Cursor, Job]]:
        """As `list_jobs`, each job with its `Cursor`, starting after `after`
        (None: the newest): the order is total (created_at, then insert
        order), so paging by the last cursor neither repeats nor skips a job,
        whatever is inserted meanwhile."""
        ...

    async def unfinished(self) -> list[Job]:
        """Jobs in an UNFINISHED state, oldest `created_at` first (the order to
        resume them in)."""
        ...

    async def add_version(self, previous: Job, latest: Job) -> None:
        """In one transaction: keep `previous` as version `previous.version` of
        its job and make `latest` the job's stored latest version. Neither
        happens if either fails (a version is never lost or doubled). An
        existing (job_id, version) pair raises FailedPrecondition (another
        rerun of that version, maybe on another replica, came first); an
        unknown job raises KeyError."""
        ...

    async def versions(self, job_id: str) -> list[Job]:
        """The job's earlier versions, oldest first; [] for a job never rerun or
        unknown. The latest version is `get(job_id)`, not in this list."""
        ...

    async def cache_get(self, key: str) -> stage_pb2.StageResult | None:
        """The stage cache entry under `key`, or None."""
        ...

    async def cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        """Store `result` under `key`, replacing any entry there."""
        ...

    async def cache_delete(self, key: str) -> None:
        """Drop the entry under `key`; a missing key is not an error."""
        ...

    async def create_key(self, key: ApiKey) -> None:
        """Store a new API key record; an existing key id raises KeyError."""
        ...

    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key record with that id (revoked ones too), or None."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Key records, oldest first; only `tenant`'s when it is given."""
        ...

    async def revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        """Mark the key revoked at `revoked_at` (unix microseconds; a key
        already revoked keeps its first time) and return it; None for an
        unknown id. Every `get_key` after it returns sees it revoked."""
        ...

    async def set_quota(self, tenant: str, quota: Quota) -> None:
        """Set (replace) `tenant`'s quota."""
        ...

    async def get_quota(self, tenant: str) -> Quota | None:
        """`tenant`'s quota, or None when none was set (the default applies)."""
        ...

    async def usage(self, tenant: str, since: float) -> TenantUsage:
        """`tenant`'s QUEUED and RUNNING job counts and the created_at times
        (unix seconds) of its jobs created after `since`, oldest first."""
        ...

    async def healthy(self) -> bool:
        """Whether the store answers now (the orchestrator's health reports
        NOT_SERVING while it does not); returns within about a second."""
        ...

    async def close(self) -> None:
        """Release connections; no other method is called afterwards."""
        ...
