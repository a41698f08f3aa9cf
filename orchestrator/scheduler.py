"""Admission of stage calls: per-stage limits and two priority lanes.

A stage holds `max_concurrency` running calls plus `max_queue` waiting ones and
answers RESOURCE_EXHAUSTED beyond that. The orchestrator therefore keeps its
own queue per stage and sends no more calls than the stage can hold; the rest
wait here, where interactive jobs' calls are admitted before bulk ones (the
stage's own queue is FIFO and knows nothing of lanes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping

from stageflow.v1 import orchestrator_pb2, stage_pb2

# The last Describe seen of a stage, without calling it (None: never reached).
Describe = Callable[[str], stage_pb2.DescribeResponse | None]

INTERACTIVE = orchestrator_pb2.PRIORITY_INTERACTIVE
BULK = orchestrator_pb2.PRIORITY_BULK


def parse_limits(text: str) -> dict[str, int]:
    """ "base=2,upscale=1" -> {"base": 2, "upscale": 1}; raises ValueError naming the bad item."""
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"stage limit {item!r}: expected STAGE=N with N >= 1")
        limits[name.strip()] = int(value)
    return limits


def lane_of(priority: int) -> int:
    """The lane a job's calls wait in; UNSPECIFIED is interactive."""
    return BULK if priority == BULK else INTERACTIVE


class PriorityGate:
    """`limit` slots (None: unlimited) granted interactive lane first, each lane
    in arrival order: one per stage, and one for the jobs running at once."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.running = 0
        self.lanes: dict[int, deque[asyncio.Future[None]]] = {INTERACTIVE: deque(), BULK: deque()}
        self.closed = False
        self._idle: asyncio.Event | None = None
        self._keys: dict[asyncio.Future[None], Hashable] = {}  # who waits on each future

    def _free(self) -> bool:
        return not self.closed and (self.limit is None or self.running < self.limit)

    def _waiting(self) -> bool:
        return any(f for lane in self.lanes.values() for f in lane if not f.done())

    def position(self, key: Hashable) -> int:
        """Where the waiter named `key` stands in the order admit() grants
        slots: 1 = next, 0 = not waiting here."""
        waiting = (f for lane in (INTERACTIVE, BULK) for f in self.lanes[lane] if not f.done())
        for place, future in enumerate(waiting, start=1):
            if self._keys.get(future) == key:
                return place
        return 0

    async def acquire(self, lane: int, key: Hashable | None = None) -> None:
        """Take a slot, waiting in `lane` while none is free; `key` names the
        waiter for position()."""
        if self._free() and not self._waiting():
            self.running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lanes[lane].append(future)
        if key is not None:
            self._keys[future] = key
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            elif future in self.lanes[lane]:
                # Not there when admit() already dropped it as done: a task
                # cancelled while another released (shutdown cancels them all).
                self.lanes[lane].remove(future)
            raise
        finally:
            self._keys.pop(future, None)

    def release(self) -> None:
        self.running -= 1
        self.admit()
        if self.running == 0 and self._idle is not None:
            self._idle.set()

    def close(self) -> None:
        """Grant nothing from now on: waiters wait until they are cancelled."""
        self.closed = True

    async def drained(self) -> None:
        """Return once no slot is held."""
        if self.running > 0:
            self._idle = self._idle or asyncio.Event()
            self._idle.clear()
            await self._idle.wait()

    @contextlib.asynccontextmanager
    async def hold(self, priority: int, key: Hashable | None = None) -> AsyncIterator[None]:
        await self.acquire(lane_of(priority), key)
        try:
            yield
        finally:
            self.release()

    def admit(self) -> None:
        """Grant free slots, interactive lane first, each lane in arrival order."""
        for lane in (INTERACTIVE, BULK):
            queue = self.lanes[lane]
            while queue and self._free():
                future = queue.popleft()
                if not future.done():
                    self.running += 1
                    future.set_result(None)


class StageScheduler:
    """Per-stage admission. A limit comes from `overrides` (orchestrator
    setting) or else from the stage's last Describe (max_concurrency +
    max_queue); a stage not described yet is not limited here (its own
    RESOURCE_EXHAUSTED is then the stage-call layer's to back off from)."""

    def __init__(self, describe: Describe, overrides: Mapping[str, int] | None = None) -> None:
        self._describe = describe
        self._overrides = dict(overrides or {})
        self._gates: dict[str, PriorityGate] = {}
        self._closed = False

    def running(self, stage: str) -> int:
        gate = self._gates.get(stage)
        return gate.running if gate is not None else 0

    def limit(self, stage: str) -> int | None:
        """The calls `stage` may have in flight (None: not limited here)."""
        if stage in self._overrides:
            return self._overrides[stage]
        desc = self._describe(stage)
        if desc is None or desc.max_concurrency < 1:
            return None
        return desc.max_concurrency + max(desc.max_queue, 0)

    @contextlib.asynccontextmanager
    async def slot(self, stage: str, priority: int) -> AsyncIterator[None]:
        """Hold one of `stage`'s slots for the duration of a call."""
        limit = self.limit(stage)
        gate = self._gates.get(stage)
        if gate is None:
            gate = self._gates[stage] = PriorityGate(limit)
            gate.closed = self._closed
        elif gate.limit != limit:  # the stage was redeployed with another size
            gate.limit = limit
            gate.admit()
        async with gate.hold(priority):
            yield

    async def close(self) -> None:
        """Admit no more calls (to any stage) and return once the calls in
        flight have ended: a draining orchestrator starts no stage call."""
        self._closed = True
        gates = list(self._gates.values())
        for gate in gates:
            gate.close()
        await asyncio.gather(*(gate.drained() for gate in gates))
