"""The stage's current model, swappable while calls are running.

A call takes a lease on the current model and keeps it until its worker has
finished (not merely until the call ends: a cancelled call's worker runs to
its next step check). `swap` loads the new model in a worker thread, then
switches: new calls get the new model, leased calls finish on the old one,
which is unloaded once its last lease is returned. A load that raises leaves
the current model in place.

Everything here runs on the event loop thread except the loads and unloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

from stageflow.core import collector
from stageflow.core.errors import Unavailable
from stageflow.core.logging import get_logger
from stageflow.inference.interface import StageModel

log = get_logger(__name__)


class _Slot:
    def __init__(self, model: StageModel) -> None:
        self.model = model
        self.leases = 0
        self.retired = False


class Lease:
    """A model held for one call; use as a context manager. The model is held
    until the call has exited and, if `keep_until` was called, its worker is done."""

    def __init__(self, holder: ModelHolder, slot: _Slot) -> None:
        self._holder = holder
        self._slot = slot
        self._holds = 1  # the call itself
        slot.leases += 1

    @property
    def model(self) -> StageModel:
        return self._slot.model

    def keep_until(self, future: asyncio.Future[Any]) -> None:
        """Also hold the model until `future` (the call's worker) is done: a
        cancelled call ends before its worker reaches the next step check."""
        self._holds += 1
        future.add_done_callback(lambda _: self._drop())

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop()

    def _drop(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._holder._returned(self._slot)


class ModelHolder:
    def __init__(self, model: StageModel | None = None) -> None:
        self._current = _Slot(model) if model is not None else None
        self._swap_lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def current(self) -> StageModel:
        if self._current is None:
            raise Unavailable("the stage is loading its model; retry shortly")
        return self._current.model

    def lease(self) -> Lease:
        if self._current is None:
            raise Unavailable("the stage is loading its model; retry shortly")
        return Lease(self, self._current)

    async def swap(self, load: Callable[[], StageModel]) -> StageModel:
        """Load with `load()` in a thread, then make it current; returns it.

        One swap at a time. Shielded: a caller that goes away mid-load does not
        leave a loaded model behind unswitched.
        """
        task = asyncio.ensure_future(self._swap(load))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    async def _swap(self, load: Callable[[], StageModel]) -> StageModel:
        async with self._swap_lock:
            new = await asyncio.to_thread(load)
            old, self._current = self._current, _Slot(new)
            if old is not None:
                old.retired = True
                if old.leases == 0:
                    self._unload(old)
                else:
                    log.info("model.draining", calls=old.leases)
            return new

    def _returned(self, slot: _Slot) -> None:
        slot.leases -= 1
        if slot.retired and slot.leases == 0:
            self._unload(slot)

    def _unload(self, slot: _Slot) -> None:
        model = _name(slot.model)
        future = asyncio.get_running_loop().run_in_executor(None, _unload, slot.model)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        future.add_done_callback(lambda f: _log_unloaded(f, model))

    async def aclose(self) -> None:
        """Unload everything (call after the server drained its calls)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._current is not None:
            slot, self._current = self._current, None
            await asyncio.to_thread(slot.model.unload)


def _unload(model: StageModel) -> None:
    model.unload()
    collector.release()  # its objects may sit in the frozen generation since the start


def _name(model: StageModel) -> str:
    try:
        identity = model.describe().identity
    except Exception:
        return type(model).__name__
    return f"{identity.name}@{identity.version}"


def _log_unloaded(future: asyncio.Future[Any], model: str) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.warning("model.unload.failed", model=model, error=f"{type(error).__name__}: {error}")
    else:
        log.info("model.unloaded", model=model)
