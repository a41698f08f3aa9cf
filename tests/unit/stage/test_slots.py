import asyncio

import pytest

from stageflow.core.errors import ResourceExhausted
from stageflow.stage.slots import ExecutionSlots


async def test_admitted_calls_wait_for_a_slot_and_beyond_the_queue_are_refused() -> None:
    slots = ExecutionSlots(capacity=1, max_queue=1)
    first = slots.admit()
    second = slots.admit()  # one for the free slot, one for the queue
    with pytest.raises(ResourceExhausted, match="max_queue 1"):
        slots.admit()
    await slots.acquire()
    first.leave()
    assert (slots.running, slots.waiting) == (1, 1)
    with pytest.raises(ResourceExhausted, match="1 running, 1 queued"):
        slots.admit()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()  # the only slot is taken
    slots.release()
    await waiter
    second.leave()
    second.leave()  # a ticket is given back once
    assert (slots.running, slots.waiting) == (1, 0)
    slots.release()
    assert slots.running == 0
    slots.admit()  # room again


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ExecutionSlots(capacity=0, max_queue=1)
