"""Batch forming, like Triton's dynamic batcher: concurrent compatible calls
run as one model call, and every other call runs as a batch of one.

A call whose params the model can batch (`StageModel.batch_key` is not None,
and `max_batch_size` > 1) waits up to `max_queue_delay_ms` for others with the
same key; a group runs as soon as it holds `max_batch_size` calls, or when the
first call's delay is up. Any other call is a group of its own, due at once. A
group takes one execution slot when it is due, so the stage computes at most
`max_concurrency` model calls at a time. Each call keeps its own progress
events and output; the model sees one call.

Admission (RESOURCE_EXHAUSTED) happens before a call gets here: each call
brings the `Ticket` it was admitted with and gives it back when its batch
starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from stageflow.core.logging import get_logger
from stageflow.inference.interface import (
    CancelledFn,
    ProgressFn,
    StageInputs,
    StageModel,
    StageOutput,
    StageParams,
)
from stageflow.stage.slots import ExecutionSlots, Ticket

# (batch size) -> None: told when a batch starts computing (metrics).
BatchObserver = Callable[[int], None]
# (the worker's future, when it started: time.perf_counter()) -> None: told
# when the call's model call starts, e.g. to hold its model until the worker ends.
WorkerHook = Callable[["asyncio.Future[Any]", float], None]

log = get_logger(__name__)


@dataclass
class _Call:
    ticket: Ticket
    model: StageModel
    params: StageParams
    inputs: StageInputs
    progress: ProgressFn
    cancelled: CancelledFn
    on_worker: WorkerHook | None
    result: asyncio.Future[StageOutput] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Group:
    calls: list[_Call]
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None  # set while it waits for a slot


class DynamicBatcher:
    def __init__(
        self,
        slots: ExecutionSlots,
        executor: Executor,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._slots = slots
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._delay = max_queue_delay_ms / 1000.0
        self._on_batch = on_batch
        self._groups: dict[Hashable, _Group] = {}

    def batchable(self, model: StageModel, params: StageParams) -> bool:
        return self._max_batch_size > 1 and model.batch_key(params) is not None

    async def submit(
        self,
        ticket: Ticket,
        model: StageModel,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
        on_worker: WorkerHook | None = None,
    ) -> StageOutput:
        """Run one admitted call in a batch (of one, when it cannot batch) and
        return its output. `progress` and `cancelled` are called from the
        worker thread; cancelling this coroutine takes the call out of its
        batch (a batch whose calls are all gone stops at its next step check)."""
        call = _Call(ticket, model, params, inputs, progress, cancelled, on_worker)
        alone = not self.batchable(model, params)
        # A hot swap never mixes two models' calls; a call that cannot batch is
        # a group of its own.
        group_key = ("alone", id(call)) if alone else (id(model), model.batch_key(params))
        group = self._groups.setdefault(group_key, _Group([]))
        group.calls.append(call)
        if alone or len(group.calls) >= self._max_batch_size:
            self._drain(group_key)
        elif group.timer is None and group.task is None:
            loop = asyncio.get_running_loop()
            group.timer = loop.call_later(self._delay, self._drain, group_key)
        try:
            return await call.result
        except asyncio.CancelledError:
            # Gone before its batch started: leave the group (and drop a group
            # left empty); once running, the call's own `cancelled` drops it.
            if call in group.calls:
                group.calls.remove(call)
                if not group.calls and self._groups.get(group_key) is group:
                    del self._groups[group_key]
                    if group.timer is not None:
                        group.timer.cancel()
                    if group.task is not None:
                        group.task.cancel()
            raise

    def _drain(self, group_key: Hashable) -> None:
        """The group is due (full, alone, or its first call waited the delay):
        take a slot, then run what the group holds by then, as Triton forms a
        batch when an instance is free, so calls arriving meanwhile still join."""
        group = self._groups.get(group_key)
        if group is None or group.task is not None:
            return
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        group.task = asyncio.get_running_loop().create_task(self._execute(group_key, group))
        group.task.add_done_callback(_retrieve)

    async def _execute(self, group_key: Hashable, group: _Group) -> None:
        try:
            await self._slots.acquire()
        except BaseException as error:
            _fail(group.calls, error)
            raise
        calls = group.calls[: self._max_batch_size]
        del group.calls[: len(calls)]
        group.task = None
        if not group.calls:
            if self._groups.get(group_key) is group:
                del self._groups[group_key]
        else:
            self._drain(group_key)  # the rest has waited long enough: next slot
        for call in calls:
            call.ticket.leave()
        live = [c for c in calls if not c.result.done()]
        if not live:
            self._slots.release()
            return
        future = self._start(live)
        try:
            outputs = await future
        except BaseException as error:
            _fail(live, error)
            return
        for call, output in zip(live, outputs, strict=True):
            # A cancelled call's output is dropped: nobody is waiting for it.
            if not call.result.done():
                call.result.set_result(output)

    def _start(self, live: list[_Call]) -> asyncio.Future[list[StageOutput]]:
        """Start the model call of `live` in a worker; its slot is released when
        the worker ends, not when the calls do: a cancelled batch keeps its slot
        until the model has stopped at its next step check."""
        model = live[0].model

        def progress(step: int, total: int) -> None:
            for call in live:
                call.progress(step, total)

        def all_cancelled() -> bool:
            return all(call.result.cancelled() or call.cancelled() for call in live)

        if self._on_batch is not None:
            self._on_batch(len(live))
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        future: asyncio.Future[list[StageOutput]]
        if len(live) == 1:
            one = live[0]
            future = loop.run_in_executor(
                self._executor, _single, one.model, one.params, one.inputs, progress, all_cancelled
            )
        else:
            future = loop.run_in_executor(
                self._executor,
                model.run_batch,
                [c.params for c in live],
                [c.inputs for c in live],
                progress,
                all_cancelled,
            )
        future.add_done_callback(lambda _: self._slots.release())
        future.add_done_callback(_log_worker_end)
        for call in live:
            if call.on_worker is not None:
                call.on_worker(future, started)
        return future


def _single(
    model: StageModel,
    params: StageParams,
    inputs: StageInputs,
    progress: ProgressFn,
    cancelled: CancelledFn,
) -> list[StageOutput]:
    return [model.run_with_report(params, inputs, progress, cancelled)]


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        if call.result.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            call.result.cancel()
        else:
            call.result.set_exception(error)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _log_worker_end(future: asyncio.Future[list[StageOutput]]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.info("run.stopped", error=type(error).__name__, detail=str(error))
