"""The job store under the orchestrator's unit tests.

`jobs` is a fresh SQLite store here. tests/integration/on_postgres/ runs the
modules whose tests go through a store (reruns, the stage cache, quotas,
the scheduler, deadlines, tenants, the runner) again with `jobs` a fresh
PostgreSQL database: a server is a process, which this tier does not start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.store import JobStore


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[JobStore]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    yield store
    await store.close()
