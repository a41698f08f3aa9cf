"""Stores for the serving tests: one folder per test, one S3 bucket per session."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from stageflow.core.storage import LocalStore, ObjectStore, S3Store
from tests.s3server import S3ServerInfo


@pytest.fixture(scope="session")
def s3_store(s3_server: S3ServerInfo) -> S3Store:
    # One bucket for the session: SeaweedFS gives each bucket its own volume,
    # and a bucket per test would cost time and run out of volumes.
    return s3_server.store("stageflow-unit")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3: S3Store = request.getfixturevalue("s3_store")
    return s3


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses (the S3 bucket is shared)."""
    return f"t-{uuid.uuid4().hex[:12]}"
