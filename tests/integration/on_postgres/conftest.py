"""The orchestrator's unit tests that go through a job store, again over
PostgreSQL (tests/unit/orchestrator/conftest.py runs them over SQLite).

Each module here imports one unit test module whole (its tests and
fixtures) and replaces its `jobs` fixture with `postgres_jobs`: a
`PostgresJobStore` on a new database of the session's server (the `pg_url`
fixture), migrated as the orchestrator opens it, dropped after the test. The
runner is the single-process one (no leases): what changes is the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.orchestrator.postgres_store import PostgresJobStore
from stageflow.orchestrator.store import JobStore


@pytest.fixture
async def postgres_jobs(pg_url: str) -> AsyncIterator[JobStore]:
    store = await PostgresJobStore.open(pg_url, pool_size=4)
    yield store
    await store.close()


HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Only the imported tests that use a store run here again; the rest
    (parsers, pure functions) ran in the unit tier and would prove nothing new."""
    storeless = [
        item
        for item in items
        if item.path.is_relative_to(HERE) and "jobs" not in getattr(item, "fixturenames", ())
    ]
    if storeless:
        config.hook.pytest_deselected(items=storeless)
        ids = {id(item) for item in storeless}
        items[:] = [item for item in items if id(item) not in ids]
