"""tests/unit/orchestrator/test_cache.py over PostgreSQL (see conftest.py)."""

from __future__ import annotations

import pytest

from stageflow.orchestrator.store import JobStore
from tests.unit.orchestrator.test_cache import *  # noqa: F403 (the tests and their fixtures)


@pytest.fixture
def jobs(postgres_jobs: JobStore) -> JobStore:
    return postgres_jobs
