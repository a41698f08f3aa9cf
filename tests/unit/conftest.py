"""The unit tier's rules, and the fixture models shared by the inference and ONNX tests.

Two rules hold for every test under tests/unit, checked here rather than trusted:

- **No processes.** A unit test (its module, fixtures and body) starts no
  process: `subprocess`, `asyncio`'s subprocesses, `multiprocessing`, `os.fork`,
  `os.posix_spawn` and `os.system` raise `ProcessStarted` while a unit test is
  collected, set up, run or torn down. A test that needs a real server process
  belongs in tests/integration.
- **No model stack at collection.** Collecting tests/unit imports neither torch
  nor the libraries built on it: a test that uses them imports them in its body
  or in a fixture, so `pytest tests/unit/orchestrator` never pays for torch and
  collection stays fast. The session fails at the end of collection, naming the
  module that pulled one in.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

UNIT = Path(__file__).parent
# Seconds to import, each: none of them may be imported by collecting tests/unit.
MODEL_STACK = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "onnx",
    "onnxscript",
    "rapidocr",
)


class ProcessStarted(AssertionError):
    """A unit test tried to start a process."""


def _in_unit(path: Path | None) -> bool:
    return path is not None and path.is_relative_to(UNIT)


# --- no processes ----------------------------------------------------------------

# Every way Python starts a process ends in one of these: subprocess.Popen (and
# asyncio's subprocesses, which run it) calls its own binding of fork_exec or
# os.posix_spawn; multiprocessing's spawn calls _posixsubprocess.fork_exec;
# os.fork and os.system start one directly.
_STARTERS: tuple[tuple[Any, str], ...] = (
    (subprocess, "_fork_exec"),
    (_posixsubprocess, "fork_exec"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "system"),
)


@contextmanager
def _no_processes(where: str) -> Iterator[None]:
    originals = [(owner, name, getattr(owner, name)) for owner, name in _STARTERS]

    def refuse(name: str) -> Callable[..., Any]:
        def starter(*args: Any, **kwargs: Any) -> Any:
            raise ProcessStarted(
                f"{where} started a process ({name}): unit tests start no processes; "
                "a test that needs one belongs in tests/integration"
            )

        return starter

    for owner, name, _ in originals:
        setattr(owner, name, refuse(name))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _no_processes(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _no_processes(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _no_processes(item.nodeid):
        return (yield)


# --- no model stack at collection ------------------------------------------------

_pulled: dict[str, list[str]] = {}  # collector node id -> model-stack modules it imported


def _loaded_model_stack() -> set[str]:
    return {name for name in MODEL_STACK if name in sys.modules}


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    if not isinstance(collector, pytest.Module) or not _in_unit(collector.path):
        return (yield)
    before = _loaded_model_stack()
    with _no_processes(collector.nodeid):
        report = yield
    pulled = _loaded_model_stack() - before
    if pulled:
        _pulled[collector.nodeid] = sorted(pulled)
    return report


def pytest_collection_finish(session: pytest.Session) -> None:
    problems = [f"{node} imports {', '.join(names)}" for node, names in _pulled.items()]
    # Also what this conftest's own imports (or a conftest below it) pulled in, seen
    # when the session collected nothing but unit tests.
    if session.items and all(_in_unit(item.path) for item in session.items):
        loaded = _loaded_model_stack() - {n for names in _pulled.values() for n in names}
        if loaded:
            problems.append(f"a conftest under tests/unit imports {', '.join(sorted(loaded))}")
    if problems:
        raise pytest.UsageError(
            "collecting tests/unit must not import the model stack (import it inside "
            "the test or a fixture):\n  " + "\n  ".join(problems)
        )


# --- fixture models ----------------------------------------------------------------


@pytest.fixture(scope="session")
def one_torch_thread() -> None:
    """One torch thread: bit-identical results need a fixed thread count."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixture_models(
    tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None
) -> dict[str, Path]:
    from stageflow.inference.fixtures import build_fixtures

    return build_fixtures(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="session")
def sd_folder(fixture_models: dict[str, Path]) -> Path:
    from stageflow.inference.fixtures import SD_FOLDER

    return fixture_models[SD_FOLDER]


@pytest.fixture(scope="session")
def sdxl_folder(fixture_models: dict[str, Path]) -> Path:
    from stageflow.inference.fixtures import SDXL_FOLDER

    return fixture_models[SDXL_FOLDER]


@pytest.fixture(scope="session")
def sdxl_refiner_folder(fixture_models: dict[str, Path]) -> Path:
    from stageflow.inference.fixtures import SDXL_REFINER_FOLDER

    return fixture_models[SDXL_REFINER_FOLDER]


@pytest.fixture(scope="session")
def esrgan_folder(fixture_models: dict[str, Path]) -> Path:
    from stageflow.inference.fixtures import ESRGAN_FOLDER

    return fixture_models[ESRGAN_FOLDER]
