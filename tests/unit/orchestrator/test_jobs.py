"""The JobStore contract (orchestrator/store.py), run over every implementation.

`TestJobStoreContract` runs over the SQLite store and the in-memory fake the
runner tests use; tests/integration/test_postgres_store.py runs the same class
over the PostgreSQL store (it needs a server, so it is not in this tier).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stageflow.core.errors import FailedPrecondition, ResourceExhausted
from stageflow.orchestrator import migrations
from stageflow.orchestrator.auth import DISPLAY_CHARS, new_key
from stageflow.orchestrator.quotas import Quota
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.store import JobStore, new_job_id
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import MemoryJobStore

S = orchestrator_pb2
SECRET = "s" * 32
NOW_US = 1_800_000_000_000_000  # a submit time, unix microseconds

IMPLEMENTATIONS: dict[str, Callable[[Path], JobStore]] = {
    "sqlite": lambda tmp: SqliteJobStore(tmp / "db" / "jobs.sqlite"),
    "memory": lambda tmp: MemoryJobStore(),
}


def _job(created_us: int, state: S.JobState = S.JOB_STATE_QUEUED, tenant: str = "") -> S.Job:
    ts = Timestamp()
    ts.FromMicroseconds(created_us)
    return S.Job(
        job_id=new_job_id(),
        state=state,
        bundle=S.PromptBundle(base="a castle"),
        stages=[S.StageRun(stage="base", state=S.STAGE_STATE_PENDING)],
        created_at=ts,
        updated_at=ts,
        tenant=tenant,
    )


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    jobs = IMPLEMENTATIONS[request.param](tmp_path)
    yield jobs
    await jobs.close()


async def test_round_trip_and_update_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    jobs = SqliteJobStore(path)
    job = _job(1_000)
    stored, created = await jobs.create(job)
    assert created and stored == job
    job.state = S.JOB_STATE_SUCCEEDED
    job.stages[0].state = S.STAGE_STATE_SUCCEEDED
    job.stages[0].output.key = "artifacts/x.png"
    await jobs.update(job)
    await jobs.close()

    reopened = SqliteJobStore(path)
    try:
        assert await reopened.get(job.job_id) == job
        assert await reopened.get("job-missing") is None
    finally:
        await reopened.close()


async def test_a_database_from_before_tenants_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, request_id TEXT NOT NULL DEFAULT '',"
        " state TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
        " job BLOB NOT NULL);"
        "CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id != '';"
    )
    old = _job(1)
    conn.execute(
        "INSERT INTO jobs VALUES (?, 'req-1', 'JOB_STATE_QUEUED', 1, 1, ?)",
        (old.job_id, old.SerializeToString()),
    )
    conn.commit()
    conn.close()
    jobs = SqliteJobStore(path)
    try:
        assert [j.job_id for j in await jobs.list_jobs(10, tenant="")] == [old.job_id]
        _, created = await jobs.create(_job(2, tenant="acme"), "req-1")
        assert created
    finally:
        await jobs.close()


def test_job_ids_are_unique_and_prefixed() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("job-") for i in ids)


class TestJobStoreContract:
    """The contract, over the `store` fixture: here the SQLite and in-memory
    stores; tests/integration/test_postgres_store.py subclasses it with a
    PostgreSQL one (a real server, so not in this tier)."""

    async def test_same_request_id_returns_the_first_job(self, store: JobStore) -> None:
        first, created = await store.create(_job(1), "req-1")
        assert created
        again, created_again = await store.create(_job(2), "req-1")
        assert not created_again and again.job_id == first.job_id
        # Empty keys are not keys: every such job is new.
        _, a = await store.create(_job(3), "")
        _, b = await store.create(_job(4), "")
        assert a and b
        assert len(await store.list_jobs(10)) == 3

    async def test_request_ids_and_lists_are_per_tenant(self, store: JobStore) -> None:
        a, _ = await store.create(_job(1, tenant="acme"), "req-1")
        b, created = await store.create(_job(2, tenant="globex"), "req-1")
        assert created and b.job_id != a.job_id  # one tenant's key never returns another's job
        again, created = await store.create(_job(3, tenant="acme"), "req-1")
        assert not created and again.job_id == a.job_id
        assert [j.job_id for j in await store.list_jobs(10, tenant="acme")] == [a.job_id]
        assert [j.job_id for j in await store.list_jobs(10, tenant="globex")] == [b.job_id]
        assert await store.list_jobs(10, S.JOB_STATE_SUCCEEDED, tenant="acme") == []
        assert len(await store.list_jobs(10)) == 2

    async def test_keys_are_created_listed_and_revoked(self, store: JobStore) -> None:
        key, record = new_key("acme", SECRET)
        _, other = new_key("globex", SECRET)
        await store.create_key(record)
        await store.create_key(other)
        with pytest.raises(KeyError):
            await store.create_key(record)
        assert await store.get_key(record.key_id) == record
        assert await store.get_key("000000000000") is None
        assert [k.key_id for k in await store.list_keys("acme")] == [record.key_id]
        assert len(await store.list_keys()) == 2
        revoked = await store.revoke_key(record.key_id, 5)
        assert revoked is not None and revoked.revoked_at == 5
        again = await store.revoke_key(record.key_id, 9)
        assert again is not None and again.revoked_at == 5  # the first revocation stands
        stored = await store.get_key(record.key_id)
        assert stored is not None and stored.revoked
        assert await store.revoke_key("000000000000", 5) is None
        # Only the hash is stored: the key appears nowhere in the record.
        assert key not in repr(stored) and stored.prefix == key[:DISPLAY_CHARS]

    async def test_list_is_newest_first_with_a_state_filter_and_a_limit(
        self, store: JobStore
    ) -> None:
        old = _job(1_000, S.JOB_STATE_SUCCEEDED)
        mid = _job(2_000, S.JOB_STATE_RUNNING)
        new = _job(3_000, S.JOB_STATE_SUCCEEDED)
        for job in (mid, new, old):
            await store.create(job)
        assert [j.job_id for j in await store.list_jobs(10)] == [new.job_id, mid.job_id, old.job_id]
        assert [j.job_id for j in await store.list_jobs(1)] == [new.job_id]
        done = await store.list_jobs(10, S.JOB_STATE_SUCCEEDED)
        assert [j.job_id for j in done] == [new.job_id, old.job_id]

    async def test_pages_follow_the_cursor_without_repeats_or_gaps(self, store: JobStore) -> None:
        # Two pairs share a created_at: the insert order breaks the tie.
        times = [1_000, 2_000, 2_000, 3_000, 4_000, 4_000, 5_000]
        jobs = [_job(t, tenant="acme") for t in times]
        for job in jobs:
            await store.create(job)
        await store.create(_job(3_500, tenant="globex"))
        newest_first = [j.job_id for j in reversed(jobs)]  # later insert first on a tie
        seen: list[str] = []
        after = None
        for _ in range(10):
            rows = await store.list_page(3, tenant="acme", after=after)
            seen += [job.job_id for _, job in rows]
            if len(rows) < 3:
                break
            after = rows[-1][0]
            # Newer jobs arriving between pages change nothing that follows.
            await store.create(_job(9_000 + len(seen), tenant="acme"))
        assert seen == newest_first
        cursors = [c for c, _ in await store.list_page(10, tenant="acme")]
        assert cursors == sorted(cursors, reverse=True) and len(set(cursors)) == len(cursors)
        last = await store.list_page(10, tenant="acme", after=cursors[-1])
        assert last == []
        done = await store.list_page(10, S.JOB_STATE_SUCCEEDED, tenant="acme")
        assert done == []

    async def test_unfinished_lists_queued_and_running_oldest_first(self, store: JobStore) -> None:
        running = _job(2_000, S.JOB_STATE_RUNNING)
        queued = _job(1_000, S.JOB_STATE_QUEUED)
        for job in (running, queued, _job(500, S.JOB_STATE_FAILED)):
            await store.create(job)
        assert [j.job_id for j in await store.unfinished()] == [queued.job_id, running.job_id]

    async def test_unknown_ids_read_as_none_and_empty_and_updating_one_raises(
        self, store: JobStore
    ) -> None:
        assert await store.get("job-missing") is None
        assert await store.versions("job-missing") == []
        with pytest.raises(KeyError):
            await store.update(_job(1))

    async def test_a_new_version_keeps_the_previous_one(self, store: JobStore) -> None:
        first = _job(1_000, S.JOB_STATE_SUCCEEDED)
        first.version = 1
        await store.create(first)
        second = S.Job()
        second.CopyFrom(first)
        second.version, second.state = 2, S.JOB_STATE_QUEUED
        await store.add_version(first, second)
        third = S.Job()
        third.CopyFrom(second)
        third.version = 3
        await store.add_version(second, third)
        assert await store.get(first.job_id) == third
        assert await store.versions(first.job_id) == [first, second]
        assert [j.job_id for j in await store.unfinished()] == [first.job_id]
        # The same version twice (a concurrent rerun lost the race) is refused,
        # and nothing of the failed call lands.
        with pytest.raises(FailedPrecondition, match="rerun meanwhile"):
            await store.add_version(second, first)
        assert await store.get(first.job_id) == third
        assert await store.versions(first.job_id) == [first, second]

    async def test_cache_entries_are_put_replaced_and_deleted(self, store: JobStore) -> None:
        def result(key: str) -> stage_pb2.StageResult:
            return stage_pb2.StageResult(output=common_pb2.ArtifactRef(key=key, sha256="ab"))

        assert await store.cache_get("k") is None
        await store.cache_put("k", "base", result("artifacts/a.png"))
        assert await store.cache_get("k") == result("artifacts/a.png")
        await store.cache_put("k", "base", result("artifacts/b.png"))
        assert await store.cache_get("k") == result("artifacts/b.png")
        await store.cache_delete("k")
        await store.cache_delete("k")  # a missing key is not an error
        assert await store.cache_get("k") is None

    async def test_a_submit_over_the_queued_quota_inserts_nothing(self, store: JobStore) -> None:
        quota = Quota(max_queued=2)
        for i in range(2):
            _, created = await store.create(_job(NOW_US + i, tenant="acme"), f"r{i}", quota)
            assert created
        with pytest.raises(ResourceExhausted, match="at most 2 queued") as err:
            await store.create(_job(NOW_US + 5, tenant="acme"), "r2", quota)
        assert err.value.retry_after_seconds
        assert len(await store.list_jobs(10, tenant="acme")) == 2
        # A retry of an accepted submit is answered, not refused; other tenants are untouched.
        again, created = await store.create(_job(NOW_US + 6, tenant="acme"), "r1", quota)
        assert not created and again.tenant == "acme"
        _, created = await store.create(_job(NOW_US + 7, tenant="globex"), "r2", quota)
        assert created
        # A finished job no longer counts as queued.
        done = (await store.list_jobs(1, tenant="acme"))[0]
        done.state = S.JOB_STATE_SUCCEEDED
        await store.update(done)
        _, created = await store.create(_job(NOW_US + 8, tenant="acme"), "r3", quota)
        assert created

    async def test_the_per_minute_quota_counts_the_last_60_seconds(self, store: JobStore) -> None:
        quota = Quota(per_minute=2)
        await store.create(_job(NOW_US, tenant="acme"), "", quota)
        await store.create(_job(NOW_US + 30_000_000, tenant="acme"), "", quota)
        with pytest.raises(ResourceExhausted, match="per minute") as err:
            await store.create(_job(NOW_US + 40_000_000, tenant="acme"), "", quota)
        assert err.value.retry_after_seconds == 20  # when the first leaves the window
        _, created = await store.create(_job(NOW_US + 61_000_000, tenant="acme"), "", quota)
        assert created
        assert len(await store.list_jobs(10)) == 3

    async def test_concurrent_submits_never_overshoot_the_quota(self, store: JobStore) -> None:
        quota = Quota(max_queued=3, per_minute=100)
        results = await asyncio.gather(
            *(store.create(_job(NOW_US + i, tenant="acme"), "", quota) for i in range(12)),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(accepted) == 3 and len(refused) == 9
        assert len(await store.list_jobs(20, tenant="acme")) == 3

    async def test_quotas_are_set_replaced_and_read(self, store: JobStore) -> None:
        assert await store.get_quota("acme") is None
        await store.set_quota("acme", Quota(max_running=1, max_queued=2))
        await store.set_quota("acme", Quota(per_minute=5))
        assert await store.get_quota("acme") == Quota(per_minute=5)
        assert await store.get_quota("globex") is None

    async def test_it_reports_healthy(self, store: JobStore) -> None:
        assert await store.healthy()


def test_a_sqlite_file_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    asyncio.run(SqliteJobStore(path).close())  # created at the latest version
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'future', 0)",
            (migrations.latest("sqlite") + 1,),
        )
    with pytest.raises(migrations.SchemaTooNew, match="newer than the latest"):
        SqliteJobStore(path)
