"""The dynamic batcher's grouping, delay and size limit, with a fake model; calls that
cannot batch run as batches of one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest
from PIL import Image

from stageflow.core.errors import ResourceExhausted
from stageflow.inference.interface import (
    CancelledFn,
    ModelDescription,
    ProgressFn,
    StageInputs,
    StageKind,
    StageModel,
    StageOutput,
    StageParams,
    Txt2ImgParams,
)
from stageflow.stage.batcher import DynamicBatcher
from stageflow.stage.slots import ExecutionSlots


class FakeTxt2Img(StageModel):
    """Paints each request's seed into its pixel; records every model call's size."""

    kind: ClassVar[StageKind] = StageKind.TXT2IMG
    params_type: ClassVar[type] = Txt2ImgParams

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def load(self) -> None:
        return None

    def describe(self) -> ModelDescription:
        raise NotImplementedError

    def batch_key(self, params: StageParams) -> Hashable | None:
        assert isinstance(params, Txt2ImgParams)
        return (params.width, params.height, params.steps, params.guidance_scale)

    def run(
        self, params: StageParams, inputs: StageInputs, progress: ProgressFn, cancelled: CancelledFn
    ) -> Image.Image:
        return self.run_batch([params], [inputs], progress, cancelled)[0].image

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        self.calls.append(len(params_list))
        self.entered.set()
        self.gate.wait(10)
        progress(1, 1)
        return [
            StageOutput(Image.new("L", (1, 1), p.seed))  # type: ignore[union-attr]
            for p in params_list
        ]


def params(seed: int, width: int = 64) -> Txt2ImgParams:
    return Txt2ImgParams(prompt=f"p{seed}", seed=seed, width=width, height=64, steps=2)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


SLOTS: dict[DynamicBatcher, ExecutionSlots] = {}


def batcher(
    executor: ThreadPoolExecutor, *, size: int = 4, delay_ms: float = 50, max_queue: int = 16
) -> tuple[DynamicBatcher, list[int]]:
    observed: list[int] = []
    slots = ExecutionSlots(1, max_queue)
    made = DynamicBatcher(
        slots, executor, max_batch_size=size, max_queue_delay_ms=delay_ms, on_batch=observed.append
    )
    SLOTS[made] = slots
    return made, observed


async def submit(b: DynamicBatcher, model: StageModel, p: Txt2ImgParams) -> tuple[int, int]:
    """(the seed painted into this call's output, progress events it saw); the
    call is admitted first, as the data plane does."""
    seen: list[int] = []
    ticket = SLOTS[b].admit()
    try:
        output = await b.submit(
            ticket, model, p, StageInputs(), lambda i, n: seen.append(i), lambda: False
        )
    finally:
        ticket.leave()
    pixel = output.image.getpixel((0, 0))
    assert isinstance(pixel, int)
    return pixel, len(seen)


async def test_compatible_calls_run_as_one_batch_with_their_own_outputs(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeTxt2Img()
    b, observed = batcher(executor)
    results = await asyncio.gather(*(submit(b, model, params(s)) for s in (5, 6, 7)))
    assert model.calls == [3]
    assert observed == [3]
    assert results == [(5, 1), (6, 1), (7, 1)]


async def test_incompatible_calls_are_not_grouped(executor: ThreadPoolExecutor) -> None:
    model = FakeTxt2Img()
    b, observed = batcher(executor)
    results = await asyncio.gather(
        submit(b, model, params(1, width=64)),
        submit(b, model, params(2, width=48)),
        submit(b, model, params(3, width=64)),
    )
    assert sorted(model.calls) == [1, 2]
    assert sorted(observed) == [1, 2]
    assert [seed for seed, _ in results] == [1, 2, 3]


async def test_max_batch_size_splits_and_runs_without_waiting(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeTxt2Img()
    b, _ = batcher(executor, size=2, delay_ms=10_000)
    started = time.perf_counter()
    results = await asyncio.gather(*(submit(b, model, params(s)) for s in range(4)))
    # Full batches go at once: nobody waits out the 10 s delay.
    assert time.perf_counter() - started < 5
    assert model.calls == [2, 2]
    assert [seed for seed, _ in results] == [0, 1, 2, 3]


async def test_a_lone_call_waits_the_queue_delay_then_runs_alone(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeTxt2Img()
    b, observed = batcher(executor, delay_ms=200)
    started = time.perf_counter()
    assert await submit(b, model, params(9)) == (9, 1)
    assert time.perf_counter() - started >= 0.2
    # A call that arrives after the delay is up starts a batch of its own.
    assert await submit(b, model, params(10)) == (10, 1)
    assert observed == [1, 1]


async def test_full_queue_answers_resource_exhausted(executor: ThreadPoolExecutor) -> None:
    model = FakeTxt2Img()
    model.gate.clear()  # the first batch holds the only slot
    b, _ = batcher(executor, size=1 + 1, delay_ms=0, max_queue=1)
    first = asyncio.ensure_future(submit(b, model, params(1)))
    assert await asyncio.to_thread(model.entered.wait, 10)
    second = asyncio.ensure_future(submit(b, model, params(2)))  # waits: 1 queued
    await asyncio.sleep(0.05)
    assert SLOTS[b].waiting == 1
    with pytest.raises(ResourceExhausted):
        await submit(b, model, params(3))
    model.gate.set()
    assert [await first, await second] == [(1, 1), (2, 1)]
    assert (SLOTS[b].running, SLOTS[b].waiting) == (0, 0)


class Unbatchable(FakeTxt2Img):
    def batch_key(self, params: StageParams) -> Hashable | None:
        return None

    def run(
        self, params: StageParams, inputs: StageInputs, progress: ProgressFn, cancelled: CancelledFn
    ) -> Image.Image:
        assert isinstance(params, Txt2ImgParams)
        self.calls.append(1)
        self.entered.set()
        self.gate.wait(10)
        progress(1, 1)
        return Image.new("L", (1, 1), params.seed)

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        raise AssertionError("a model that cannot batch is never given a batch")


async def test_calls_that_cannot_batch_run_at_once_as_batches_of_one(
    executor: ThreadPoolExecutor,
) -> None:
    model = Unbatchable()
    b, observed = batcher(executor, delay_ms=10_000)
    started = time.perf_counter()
    results = await asyncio.gather(*(submit(b, model, params(s)) for s in (1, 2, 3)))
    assert time.perf_counter() - started < 5  # no batch delay for them
    assert results == [(1, 1), (2, 1), (3, 1)]
    assert observed == [1, 1, 1]


async def test_a_call_cancelled_while_waiting_for_a_slot_gives_it_up(
    executor: ThreadPoolExecutor,
) -> None:
    model = Unbatchable()
    model.gate.clear()
    b, observed = batcher(executor)
    first = asyncio.ensure_future(submit(b, model, params(1)))
    assert await asyncio.to_thread(model.entered.wait, 10)
    waiting = asyncio.ensure_future(submit(b, model, params(2)))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    model.gate.set()
    assert await first == (1, 1)
    assert await submit(b, model, params(3)) == (3, 1)
    assert observed == [1, 1]  # the cancelled call never ran
    assert (SLOTS[b].running, SLOTS[b].waiting) == (0, 0)


@pytest.mark.parametrize("gone", [1, 2])
async def test_cancelled_calls_are_dropped_and_all_gone_stops_the_batch(
    executor: ThreadPoolExecutor, gone: int
) -> None:
    model = FakeTxt2Img()
    b, _ = batcher(executor, size=2, delay_ms=0)
    flags = [threading.Event(), threading.Event()]
    model.gate.clear()
    batch_cancelled: list[bool] = []

    def checking_run_batch(
        params_list: object, inputs_list: object, progress: ProgressFn, cancelled: CancelledFn
    ) -> list[StageOutput]:
        model.gate.wait(10)
        batch_cancelled.append(cancelled())  # what the model sees at its step check
        return [StageOutput(Image.new("L", (1, 1), 0))] * 2

    model.run_batch = checking_run_batch  # type: ignore[method-assign]
    calls = [
        asyncio.ensure_future(
            b.submit(
                SLOTS[b].admit(),
                model,
                params(i),
                StageInputs(),
                lambda i, n: None,
                flags[i].is_set,
            )
        )
        for i in range(2)
    ]
    await asyncio.sleep(0.05)
    for i in range(gone):
        calls[i].cancel()
        flags[i].set()
    model.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[:gone])
    # With every call gone, gather returns before the worker thread has made
    # its step check: wait for the model to report what it saw.
    async with asyncio.timeout(5):
        while not batch_cancelled:  # noqa: ASYNC110 (set by the worker thread)
            await asyncio.sleep(0.01)
    assert batch_cancelled == [gone == 2]
    if gone == 1:  # the other call still gets its output
        output = results[1]
        assert isinstance(output, StageOutput) and output.image.size == (1, 1)
