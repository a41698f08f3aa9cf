"""Every variant of deploy/k8s rendered once per session (kubectl is a process)."""

from __future__ import annotations

import pytest

from tests.deploy.render import Manifest, render, variants


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Variant name (dev, dev+loadtest, prod, prod+loadtest) → its objects."""
    return {name: render(overlay, comps) for name, (overlay, comps) in variants().items()}
