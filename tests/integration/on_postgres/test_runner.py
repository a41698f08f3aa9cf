"""tests/unit/orchestrator/test_runner.py over PostgreSQL (see conftest.py)."""

from __future__ import annotations

import pytest

from stageflow.orchestrator.store import JobStore
from tests.unit.orchestrator.test_runner import *  # noqa: F403 (the tests and their fixtures)


@pytest.fixture  # type: ignore[no-redef]  # replaces the module's SQLite/memory one
def jobs(postgres_jobs: JobStore) -> JobStore:
    return postgres_jobs
