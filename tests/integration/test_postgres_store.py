"""The JobStore contract over the PostgreSQL store, on a real server
(tests/pgserver.py): the same test class as the SQLite and in-memory stores
(tests/unit/orchestrator/test_jobs.py), with a fresh database per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from stageflow.orchestrator import migrations
from stageflow.orchestrator.postgres_store import PostgresJobStore
from stageflow.orchestrator.store import JobStore
from tests.unit.orchestrator import test_jobs


class TestPostgresJobStoreContract(test_jobs.TestJobStoreContract):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[JobStore]:
        jobs = await PostgresJobStore.open(pg_url, pool_size=4)
        yield jobs
        await jobs.close()


def _keys(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STAGEFLOW_JOB_STORE_URL=url, STAGEFLOW_AUTH_SECRET_KEY="s" * 40)
    return subprocess.run(
        [sys.executable, "-m", "stageflow.cli", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_keys_are_minted_listed_and_revoked_against_postgres(pg_url: str) -> None:
    jobs = await PostgresJobStore.open(pg_url, pool_size=1)  # migrated, as the orchestrator does
    await jobs.close()
    made = _keys(pg_url, "create", "--tenant", "acme", "--json")
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["key_id"]
    listed = _keys(pg_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["key_id"] for row in json.loads(listed.stdout)] == [key_id]
    assert _keys(pg_url, "revoke", key_id).returncode == 0
    jobs = await PostgresJobStore.open(pg_url, pool_size=1)
    try:
        key = await jobs.get_key(key_id)
    finally:
        await jobs.close()
    assert key is not None and key.revoked and key.tenant == "acme"


async def test_a_database_of_a_newer_release_is_refused(pg_url: str) -> None:
    jobs = await PostgresJobStore.open(pg_url, pool_size=1)
    await jobs.close()
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (%s, 'future', 0)",
            (migrations.latest("postgres") + 1,),
        )
    with pytest.raises(migrations.SchemaTooNew) as refused:
        await PostgresJobStore.open(pg_url, pool_size=1)
    assert (refused.value.found, refused.value.known) == (
        migrations.latest("postgres") + 1,
        migrations.latest("postgres"),
    )
