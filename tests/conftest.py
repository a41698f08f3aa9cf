"""Shared fixtures and the test tiers.

The folder sets the tier: tests/unit → `unit`, tests/integration →
`integration`, tests/e2e → `e2e`, tests/gpu → `gpu` (skipped without CUDA),
tests/deploy → `deploy`, tests/browser → `browser` (a real chromium).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PostgresServer, postgres_bin_dir
from tests.s3server import S3ServerInfo, seaweedfs_server

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "e2e", "gpu", "deploy", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = []
    for item in items:
        try:
            tier = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "gpu":
            gpu_items.append(item)
    # torch costs seconds to import: only when there are GPU tests to decide on.
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA device")
            for item in gpu_items:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerInfo]:
    """A SeaweedFS S3 server on loopback, shared by the whole session."""
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback (tests/pgserver.py), shared by the whole
    session; a test that restarts it must leave it running."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin)")
    with PostgresServer() as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (password in
    it), dropped after the test."""
    name = f"test_{next(_databases)}"
    url = pg_server.create_database(name)
    yield url
    if not pg_server.running:  # a test stopped it and failed before starting it again
        pg_server.start()
    pg_server.drop_database(name)
