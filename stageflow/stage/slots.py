"""Bounded execution slots: at most `capacity` calls run, at most `max_queue` wait.

A call beyond that is refused with RESOURCE_EXHAUSTED instead of piling up, so
an overloaded stage answers at once and callers can back off or go elsewhere.
"""

from __future__ import annotations

import asyncio

from stageflow.core.errors import ResourceExhausted


class ExecutionSlots:
    def __init__(self, capacity: int, max_queue: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._semaphore = asyncio.Semaphore(capacity)
        self._capacity = capacity
        self._max_queue = max_queue
        self._waiting = 0
        self._running = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def running(self) -> int:
        return self._running

    async def acquire(self, *, admit: bool = True) -> None:
        """Wait for a slot; raise ResourceExhausted when the queue is full.

        `admit=False` skips that check, for a caller that already admitted the
        work against the queue bound (the dynamic batcher's batches)."""
        if admit and self._semaphore.locked() and self._waiting >= self._max_queue:
            raise ResourceExhausted(
                f"stage busy: {self._running} running, {self._waiting} queued "
                f"(max_concurrency {self._capacity}, max_queue {self._max_queue})"
            )
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        self._running += 1

    def release(self) -> None:
        self._running -= 1
        self._semaphore.release()
