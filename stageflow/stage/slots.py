"""Admission and execution slots: at most `capacity` model calls compute at
once (a batch is one model call), at most `max_queue` admitted calls wait.

A call is admitted when it arrives, before any work: beyond the bound it is
refused with RESOURCE_EXHAUSTED instead of piling up, so an overloaded stage
answers at once and callers can back off or go elsewhere. An admitted call
waits (reading its inputs, forming a batch, waiting for a slot) until its model
call starts or it goes away.
"""

from __future__ import annotations

import asyncio

from stageflow.core.errors import ResourceExhausted


class Ticket:
    """One admitted call's place in the queue; `leave` gives it back (once)."""

    def __init__(self, slots: ExecutionSlots) -> None:
        self._slots: ExecutionSlots | None = slots

    def leave(self) -> None:
        """The call started computing or went away: it no longer waits."""
        if self._slots is not None:
            self._slots._waiting -= 1
            self._slots = None


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
        """Admitted calls whose model call has not started."""
        return self._waiting

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def running(self) -> int:
        """Model calls computing (each holds a slot)."""
        return self._running

    def admit(self) -> Ticket:
        """Admit one call, or raise ResourceExhausted when `max_queue` calls
        already wait beyond those the free slots will take."""
        free = self._capacity - self._running
        if self._waiting >= self._max_queue + free:
            raise ResourceExhausted(
                f"stage busy: {self._running} running, {self._waiting} queued "
                f"(max_concurrency {self._capacity}, max_queue {self._max_queue})"
            )
        self._waiting += 1
        return Ticket(self)

    async def acquire(self) -> None:
        """Wait for a slot (in arrival order) for one model call of admitted calls."""
        await self._semaphore.acquire()
        self._running += 1

    def release(self) -> None:
        self._running -= 1
        self._semaphore.release()
