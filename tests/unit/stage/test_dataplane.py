"""The stage data plane with a fake model: one path for every call, its errors
in the order a caller sees them, progress, timing, the slot held to the end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image, ImageFile

from stageflow.core.artifacts import put_artifact
from stageflow.core.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from stageflow.core.storage import LocalStore
from stageflow.inference.interface import (
    CancelledFn,
    ModelDescription,
    ModelIdentity,
    ProgressFn,
    StageInputs,
    StageKind,
    StageModel,
    StageOutput,
    StageParams,
    Txt2ImgParams,
    param_ranges,
)
from stageflow.stage.dataplane import (
    Finished,
    InputRef,
    Progress,
    StageCall,
    StageDataPlane,
)
from stageflow.stage.images import encode_png

WAIT = 10.0


class FakeModel(StageModel):
    """`steps` steps, each waiting for `gate`; paints the seed (and the input's
    first pixel, when given) into a 2x1 image. Batches when `batches`."""

    kind: ClassVar[StageKind] = StageKind.TXT2IMG
    params_type: ClassVar[type] = Txt2ImgParams

    def __init__(self, *, batches: bool = False) -> None:
        self.batches = batches
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []
        self.saw_cancel = threading.Event()

    def load(self) -> None:
        return None

    def describe(self) -> ModelDescription:
        return ModelDescription(
            kind=self.kind,
            identity=ModelIdentity("fake", "1", "torch", "fp"),
            min_side=1,
            max_side=64,
            size_multiple=1,
            param_ranges=param_ranges(Txt2ImgParams),
        )

    def batch_key(self, params: StageParams) -> Hashable | None:
        return "all" if self.batches else None

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
        self.batch_sizes.append(len(params_list))
        self.entered.set()
        total = params_list[0].steps  # type: ignore[union-attr]
        for step in range(1, total + 1):
            while not self.gate.wait(0.01):
                if cancelled():
                    self.saw_cancel.set()
                    raise Cancelled(f"cancelled at step {step - 1} of {total}")
            progress(step, total)
        outputs = []
        for params, inputs in zip(params_list, inputs_list, strict=True):
            given = inputs.image.getpixel((0, 0)) if inputs.image is not None else 0
            image = Image.new("L", (2, 1), params.seed)  # type: ignore[union-attr]
            image.putpixel((1, 0), given)  # type: ignore[arg-type]
            outputs.append(StageOutput(image))
        return outputs


def txt2img(seed: int = 7, steps: int = 3, **kwargs: object) -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a castle", seed=seed, steps=steps, width=2, height=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def plane_for(model: FakeModel, store: LocalStore, **kwargs: object) -> StageDataPlane:
    return StageDataPlane(model, store, stage="fake", **kwargs)  # type: ignore[arg-type]


async def run(plane: StageDataPlane, call: StageCall) -> list[Progress | Finished]:
    with plane.lease() as lease:
        async with asyncio.timeout(WAIT):
            return [event async for event in plane.run(lease, call)]


async def test_a_call_streams_its_steps_then_its_stored_output_and_timing(
    store: LocalStore,
) -> None:
    plane = plane_for(FakeModel(), store)
    events = await run(plane, StageCall(txt2img(seed=9, steps=3), job_id="job-1"))
    progress, finished = events[:-1], events[-1]
    assert [(p.step, p.total_steps) for p in progress] == [(1, 3), (2, 3), (3, 3)]  # type: ignore[union-attr]
    assert isinstance(finished, Finished)
    stored = Image.open(store.root / finished.artifact.key)
    assert stored.getpixel((0, 0)) == 9
    assert finished.model.name == "fake"
    t = finished.timing
    phases = t.load_inputs_ms + t.queue_ms + t.compute_ms + t.store_output_ms
    assert t.compute_ms > 0 and phases == pytest.approx(t.total_ms, rel=1e-6)
    plane.close()


async def test_inputs_are_read_from_the_store_and_a_missing_one_is_named(
    store: LocalStore,
) -> None:
    plane = plane_for(FakeModel(), store)
    artifact = put_artifact(store, encode_png(Image.new("L", (2, 1), 200)))
    image = InputRef("image", artifact.key, artifact.sha256)
    *_, finished = await run(plane, StageCall(txt2img(), image=image))
    assert isinstance(finished, Finished)
    assert finished.output.image.getpixel((1, 0)) == 200
    missing = InputRef("mask", "artifacts/sha256/ab/nothing.png", "a" * 64)
    with pytest.raises(NotFound, match="mask"):
        await run(plane, StageCall(txt2img(), mask=missing))
    with pytest.raises(InvalidArgument, match=r"image\.key"):
        await run(plane, StageCall(txt2img(), image=InputRef("image", "", "a" * 64)))
    plane.close()


async def test_bad_params_are_refused_before_admission_and_overload_after(
    store: LocalStore,
) -> None:
    model = FakeModel()
    model.gate.clear()
    plane = plane_for(model, store, max_concurrency=1, max_queue=0)
    running = asyncio.ensure_future(run(plane, StageCall(txt2img())))
    assert await asyncio.to_thread(model.entered.wait, WAIT)
    # A full stage still names a bad field first: nothing was admitted for it.
    with pytest.raises(InvalidArgument, match="steps"):
        await run(plane, StageCall(txt2img(steps=0)))
    with pytest.raises(ResourceExhausted, match="max_queue 0"):
        await run(plane, StageCall(txt2img()))
    model.gate.set()
    assert isinstance((await running)[-1], Finished)
    assert isinstance((await run(plane, StageCall(txt2img())))[-1], Finished)  # room again
    plane.close()


async def test_a_lone_call_of_a_batching_model_is_a_batch_of_one_and_two_batch(
    store: LocalStore,
) -> None:
    model = FakeModel(batches=True)
    plane = plane_for(model, store, max_batch_size=4, max_queue_delay_ms=50)
    first = await run(plane, StageCall(txt2img(seed=1)))
    both = await asyncio.gather(
        run(plane, StageCall(txt2img(seed=2))), run(plane, StageCall(txt2img(seed=3)))
    )
    assert model.batch_sizes == [1, 2]
    seeds = [events[-1].output.image.getpixel((0, 0)) for events in (first, *both)]  # type: ignore[union-attr]
    assert seeds == [1, 2, 3]
    # Each call of the batch streams every step of it.
    assert [len(events) for events in both] == [4, 4]
    plane.close()


async def test_the_deadline_stops_the_model_as_deadline_exceeded(store: LocalStore) -> None:
    model = FakeModel()
    model.gate.clear()
    plane = plane_for(model, store)
    with pytest.raises(DeadlineExceeded, match="cancelled at step 0 of 3"):
        await run(plane, StageCall(txt2img(), time_remaining=0.2))
    assert model.saw_cancel.is_set()
    plane.close()


async def test_a_caller_that_leaves_stops_the_model_and_frees_the_slot(
    store: LocalStore,
) -> None:
    model = FakeModel()
    model.gate.clear()
    plane = plane_for(model, store, max_concurrency=1, max_queue=0)
    call = asyncio.ensure_future(run(plane, StageCall(txt2img())))
    assert await asyncio.to_thread(model.entered.wait, WAIT)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await asyncio.to_thread(model.saw_cancel.wait, WAIT)
    model.gate.set()
    async with asyncio.timeout(WAIT):  # the worker ends, then its slot is free again
        while True:
            try:
                events = await run(plane, StageCall(txt2img()))
                break
            except ResourceExhausted:
                await asyncio.sleep(0.01)
    assert isinstance(events[-1], Finished)
    plane.close()


async def test_an_oversize_input_is_refused_from_its_header_before_any_decode(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.stage.test_image_headers import png_bomb, png_header

    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    plane = plane_for(FakeModel(), store)
    for data in (png_header(9000, 9000), png_bomb(20000, 20000)):
        artifact = put_artifact(store, data)
        ref = InputRef("image", artifact.key, artifact.sha256)
        with pytest.raises(InvalidArgument) as caught:
            await run(plane, StageCall(txt2img(), image=ref))
        assert caught.value.field == "image"
        assert "[1, 64] pixels" in caught.value.message  # the model's Describe sides
    assert decoded == []
    plane.close()


async def test_the_requests_output_prefix_is_honoured_inside_the_store(
    store: LocalStore,
) -> None:
    plane = plane_for(FakeModel(), store, output_prefix="default")
    *_, named = await run(plane, StageCall(txt2img(seed=1), output_prefix="team/a/"))
    *_, unnamed = await run(plane, StageCall(txt2img(seed=2)))
    assert isinstance(named, Finished) and isinstance(unnamed, Finished)
    assert named.artifact.key.startswith("team/a/sha256/")
    assert unnamed.artifact.key.startswith("default/sha256/")
    assert (store.root / named.artifact.key).is_file()
    for bad in ("../escape", "a//b", "a/./b", "a\\b", "x" * 300):
        with pytest.raises(InvalidArgument, match=r"^output_prefix: must"):
            await run(plane, StageCall(txt2img(), output_prefix=bad))
    assert not (store.root.parent / "escape").exists()
    plane.close()
