"""Dynamic batching, like Triton's dynamic batcher: concurrent compatible calls
run as one model call.

A call whose params the model can batch (`StageModel.batch_key` is not None)
waits up to `max_queue_delay_ms` for others with the same key; a group runs
as soon as it holds `max_batch_size` calls, or when the first call's delay is
up. A batch takes one execution slot, like a single call, so the stage still
computes at most `max_concurrency` model calls at a time. Each call keeps its
own progress events and output; the model sees one call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from stageflow.core.errors import ResourceExhausted
from stageflow.inference.interface import (
    CancelledFn,
    ProgressFn,
    StageInputs,
    StageModel,
    StageOutput,
    StageParams,
)
from stageflow.stage.slots import ExecutionSlots

# (batch size) -> None: told when a batch starts computing (metrics).
BatchObserver = Callable[[int], None]
# (the worker's future) -> None: e.g. a model lease held until the worker ends.
WorkerHook = Callable[["asyncio.Future[Any]"], None]


@dataclass
class _Call:
    model: StageModel
    params: StageParams
    inputs: StageInputs
    progress: ProgressFn
    cancelled: CancelledFn
    on_worker: WorkerHook | None
    result: asyncio.Future[tuple[StageOutput, float]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Group:
    calls: list[_Call]
    timer: asyncio.TimerHandle | None = None
    draining: bool = False  # a task waits for a slot to take calls from this group


class DynamicBatcher:
    def __init__(
        self,
        slots: ExecutionSlots,
        executor: Executor,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._slots = slots
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._delay = max_queue_delay_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._groups: dict[Hashable, _Group] = {}
        self._pending = 0  # calls waiting for their batch to form

    @property
    def pending(self) -> int:
        return self._pending

    def batchable(self, model: StageModel, params: StageParams) -> bool:
        return self._max_batch_size > 1 and model.batch_key(params) is not None

    async def submit(
        self,
        model: StageModel,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
        on_worker: WorkerHook | None = None,
    ) -> tuple[StageOutput, float]:
        """Run one call in a batch; return its output and when compute began
        (time.perf_counter()). Raises ResourceExhausted when the queue is full."""
        key = model.batch_key(params)
        if key is None:
            raise ValueError("submit() needs params the model can batch")
        # Same bound as ExecutionSlots: refuse when every slot is busy and
        # max_queue calls (forming batches or batches waiting) already wait.
        if self._slots.running >= self._slots.capacity and (
            self._slots.waiting + self._pending >= self._max_queue
        ):
            raise ResourceExhausted(
                f"stage busy: {self._slots.running} running, "
                f"{self._slots.waiting + self._pending} queued (max_queue {self._max_queue})"
            )
        call = _Call(model, params, inputs, progress, cancelled, on_worker)
        group_key = (id(model), key)  # a hot swap never mixes two models' calls
        group = self._groups.setdefault(group_key, _Group([]))
        group.calls.append(call)
        self._pending += 1
        if len(group.calls) >= self._max_batch_size:
            self._drain(group_key)
        elif group.timer is None and not group.draining:
            loop = asyncio.get_running_loop()
            group.timer = loop.call_later(self._delay, self._drain, group_key)
        try:
            return await call.result
        except asyncio.CancelledError:
            # Gone before its batch formed: leave the group; once running, the
            # call's own `cancelled` drops it (the batch stops when all are gone).
            if call in group.calls:
                group.calls.remove(call)
                self._pending -= 1
            raise

    def _drain(self, group_key: Hashable) -> None:
        """The group is due (full, or its first call waited the delay): take a
        slot, then run what the group holds by then, as Triton forms a batch
        when an instance is free, so calls arriving meanwhile still join."""
        group = self._groups.get(group_key)
        if group is None or group.draining:
            return
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        group.draining = True
        task = asyncio.get_running_loop().create_task(self._execute(group_key, group))
        task.add_done_callback(_retrieve)

    async def _execute(self, group_key: Hashable, group: _Group) -> None:
        try:
            await self._slots.acquire(admit=False)
        except BaseException as error:
            _fail(group.calls, error)
            raise
        calls = group.calls[: self._max_batch_size]
        del group.calls[: len(calls)]
        self._pending -= len(calls)
        group.draining = False
        if not group.calls:
            del self._groups[group_key]
        else:
            self._drain(group_key)  # the rest has waited long enough: next slot
        loop = asyncio.get_running_loop()
        live = [c for c in calls if not c.result.done()]
        if not live:
            self._slots.release()
            return
        model = live[0].model

        def progress(step: int, total: int) -> None:
            for call in live:
                call.progress(step, total)

        def all_cancelled() -> bool:
            return all(call.result.cancelled() or call.cancelled() for call in live)

        if self._on_batch is not None:
            self._on_batch(len(live))
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
        for call in live:
            if call.on_worker is not None:
                call.on_worker(future)
        try:
            outputs = await future
        except BaseException as error:
            _fail(live, error)
            return
        for call, output in zip(live, outputs, strict=True):
            # A cancelled call's output is dropped: nobody is waiting for it.
            if not call.result.done():
                call.result.set_result((output, started))


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
