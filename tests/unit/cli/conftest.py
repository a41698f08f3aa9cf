from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli.fakes import FakeOrchestrator, ServerThread


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeOrchestrator, str]]:
    """A fake orchestrator and its address."""
    servicer = FakeOrchestrator(tmp_path)
    with ServerThread(servicer) as server:
        yield servicer, server.address
