"""A service's --help and errors name the service, not `__main__.py`."""

from __future__ import annotations

import sys
import types

import pytest

from stageflow.core import settings


def test_a_module_run_with_dash_m_is_named_by_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="stageflow.services.base.__main__")  # type: ignore[assignment]
    monkeypatch.setattr(sys, "argv", ["/x/stageflow/services/base/__main__.py", "--help"])
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert settings._prog() == "python -m stageflow.services.base"


def test_a_script_keeps_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/stageflow-orchestrator"])
    assert settings._prog() == "stageflow-orchestrator"
