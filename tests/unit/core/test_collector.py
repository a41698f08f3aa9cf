"""The collector pause of a stage's start (stageflow.core.collector)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stageflow.core import collector


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    collector.resume()
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_pause_stops_collection_until_resume_which_freezes_the_survivors() -> None:
    gc.enable()
    collector.pause()
    assert not gc.isenabled()
    kept = _Node()  # alive at resume: frozen, skipped by later collections
    collector.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert all(obj is not kept for obj in gc.get_objects())
    collector.resume()  # a second resume is a no-op
    assert gc.isenabled()


def test_pause_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    collector.pause()
    collector.resume()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_release_frees_cycles_that_were_frozen() -> None:
    gc.enable()
    collector.pause()
    ref = _cycle()  # a model's cycles, alive at the start and dropped by a swap
    collector.resume()
    gc.collect()
    assert ref() is not None  # frozen: a collection does not see it
    collector.release()
    assert ref() is None
    assert gc.get_freeze_count() > 0  # the survivors are frozen again
