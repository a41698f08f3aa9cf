"""The JobStore contract over the PostgreSQL store, on a real server
(tests/pgserver.py): the same test class as the SQLite and in-memory stores
(tests/unit/orchestrator/test_jobs.py), with a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stageflow.orchestrator.postgres_store import PostgresJobStore
from stageflow.orchestrator.store import JobStore
from tests.unit.orchestrator import test_jobs


class TestPostgresJobStoreContract(test_jobs.TestJobStoreContract):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[JobStore]:
        jobs = await PostgresJobStore.open(pg_url, pool_size=4)
        yield jobs
        await jobs.close()
