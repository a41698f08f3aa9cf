from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.cli.fakes import FakeOrchestrator, ServerThread


@pytest.fixture
def fake() -> Iterator[tuple[FakeOrchestrator, str]]:
    """A fake orchestrator and its address."""
    servicer = FakeOrchestrator()
    with ServerThread(servicer) as server:
        yield servicer, server.address
