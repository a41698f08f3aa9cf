import asyncio

import pytest

from stageflow.core.errors import ResourceExhausted
from stageflow.stage.slots import ExecutionSlots


async def test_calls_beyond_capacity_wait_and_beyond_the_queue_are_refused() -> None:
    slots = ExecutionSlots(capacity=1, max_queue=1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert slots.waiting == 1
    with pytest.raises(ResourceExhausted, match="max_queue 1"):
        await slots.acquire()
    slots.release()
    await waiter
    assert slots.running == 1 and slots.waiting == 0
    slots.release()
    assert slots.running == 0
