"""ModelHolder: swaps switch new calls at once, unload the old model only when
its last call is done, and keep the old model when a load fails."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from stageflow.core.errors import FailedPrecondition, Unavailable
from stageflow.inference.interface import (
    ModelDescription,
    ModelIdentity,
    StageInputs,
    StageKind,
    StageModel,
    StageParams,
    UpscaleParams,
)
from stageflow.stage.model_holder import ModelHolder


class Fake(StageModel):
    kind = StageKind.UPSCALE
    params_type = UpscaleParams

    def __init__(self, version: str) -> None:
        self.version = version
        self.unloaded = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def load(self) -> None:
        return None

    def describe(self) -> ModelDescription:
        return ModelDescription(
            kind=self.kind,
            identity=ModelIdentity("fake", self.version, "torch", "0" * 64),
            min_side=1,
            max_side=64,
            size_multiple=1,
            param_ranges={},
        )

    def run(self, params: StageParams, inputs: StageInputs, progress, cancelled):  # type: ignore[no-untyped-def]
        return Image.new("RGB", (1, 1))

    def unload(self) -> None:
        self._loop.call_soon_threadsafe(self.unloaded.set)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_swap_without_calls_unloads_the_old_model_at_once() -> None:
    old, new = Fake("1"), Fake("2")
    holder = ModelHolder(old)
    assert await holder.swap(lambda: new) is new
    assert holder.current is new
    await asyncio.wait_for(old.unloaded.wait(), 2)


async def test_calls_in_flight_keep_the_old_model_until_they_finish() -> None:
    old, new = Fake("1"), Fake("2")
    holder = ModelHolder(old)
    worker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with holder.lease() as lease:
        lease.keep_until(worker)
        await holder.swap(lambda: new)
        assert lease.model is old  # the call keeps its model
        with holder.lease() as later:
            assert later.model is new  # new calls get the new one
        worker.set_result(None)  # the worker is done, but the call still uses the model
        await settle()
        assert not old.unloaded.is_set(), "unloaded while a call still held it"
    await asyncio.wait_for(old.unloaded.wait(), 2)
    assert not new.unloaded.is_set()


async def test_a_worker_that_outlives_its_call_keeps_the_model() -> None:
    old, new = Fake("1"), Fake("2")
    holder = ModelHolder(old)
    worker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with holder.lease() as lease:
        lease.keep_until(worker)
    await holder.swap(lambda: new)
    await settle()
    assert not old.unloaded.is_set(), "unloaded while its worker still ran"
    worker.set_result(None)
    await asyncio.wait_for(old.unloaded.wait(), 2)


async def test_a_failed_load_keeps_the_old_model() -> None:
    old = Fake("1")
    holder = ModelHolder(old)

    def broken() -> StageModel:
        raise FailedPrecondition("cannot load model x@2: corrupt")

    with pytest.raises(FailedPrecondition, match="corrupt"):
        await holder.swap(broken)
    assert holder.current is old
    await settle()
    assert not old.unloaded.is_set()


async def test_no_model_yet_is_unavailable() -> None:
    """A stage still loading its model: UNAVAILABLE, which callers retry."""
    holder = ModelHolder()
    with pytest.raises(Unavailable):
        holder.lease()
    with pytest.raises(Unavailable):
        holder.current  # noqa: B018
    model = Fake("1")
    await holder.swap(lambda: model)
    await holder.aclose()
    await asyncio.wait_for(model.unloaded.wait(), 2)
