"""The one StageService implementation every stage process shares.

It validates, reads inputs from the object store, runs the `StageModel` in a
worker thread while streaming its progress, and writes the output back. The
model never sees gRPC; this module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc
from PIL import Image

from stageflow.core.artifacts import Artifact, get_artifact, put_artifact
from stageflow.core.errors import Cancelled, DeadlineExceeded, InvalidArgument
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore
from stageflow.inference.interface import StageInputs, StageModel, StageOutput, StageParams
from stageflow.serving import metrics
from stageflow.stage import codec as stage_codec
from stageflow.stage.batcher import DynamicBatcher
from stageflow.stage.images import decode_image, encode_png
from stageflow.stage.model_holder import Lease, ModelHolder
from stageflow.stage.slots import ExecutionSlots
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc

log = get_logger(__name__)

_DONE = object()


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


class _CallCancellation:
    """Cancellation as the worker thread sees it: the call went away or the
    caller's deadline passed. Checked by the model between steps."""

    def __init__(self, time_remaining: float | None) -> None:
        self._event = threading.Event()
        self._deadline = None if time_remaining is None else time.monotonic() + time_remaining

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set() or self.deadline_passed()

    def deadline_passed(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def reraise(self, err: Cancelled) -> NoReturn:
        """Name what stopped the model. The stage's own clock may see the
        deadline pass before the caller's does: then its status must be
        DEADLINE_EXCEEDED, as the caller's own timer would have said."""
        if not self._event.is_set() and self.deadline_passed():
            raise DeadlineExceeded(f"the call's deadline passed: {err.message}") from err
        raise err


class StageServicer(stage_pb2_grpc.StageServiceServicer):
    def __init__(
        self,
        model: StageModel | ModelHolder,
        store: ObjectStore,
        *,
        max_concurrency: int = 1,
        max_queue: int = 16,
        output_prefix: str = "artifacts",
        stage: str = "",
        max_batch_size: int = 1,
        max_queue_delay_ms: float = 5.0,
    ) -> None:
        """`stage` (base, refine, upscale) labels this servicer's metrics.

        `max_batch_size` > 1 turns on dynamic batching (stageflow.stage.batcher) for
        models that can batch a request's params; others run one call at a time.
        """
        # A holder, so that StageAdminService can swap the model under running calls.
        self._models = model if isinstance(model, ModelHolder) else ModelHolder(model)
        self._store = store
        self._slots = ExecutionSlots(max_concurrency, max_queue)
        self._stage = stage
        # Read at scrape time, so the gauges are never stale.
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="stage")
        self._batch_sizes = metrics.STAGE_BATCH_SIZE.labels(stage)
        self._batcher = DynamicBatcher(
            self._slots,
            self._executor,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue=max_queue,
            on_batch=self._batch_sizes.observe,
        )
        metrics.STAGE_QUEUE_DEPTH.labels(stage).set_function(
            lambda: self._slots.waiting + self._batcher.pending
        )
        metrics.STAGE_RUNNING.labels(stage).set_function(lambda: self._slots.running)
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._output_prefix = output_prefix
        self.ready = False

    async def Describe(
        self, request: stage_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> stage_pb2.DescribeResponse:
        return stage_codec.describe_response(
            self._models.current.describe(),
            ready=self.ready,
            max_concurrency=self._max_concurrency,
            max_queue=self._max_queue,
        )

    async def Run(
        self, request: stage_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        # The whole call, validation included, uses the model current at its start.
        with self._models.lease() as lease:
            async with contextlib.aclosing(self._run(request, context, lease)) as events:
                async for event in events:
                    yield event

    async def _run(
        self, request: stage_pb2.RunRequest, context: grpc.aio.ServicerContext, lease: Lease
    ) -> AsyncGenerator[stage_pb2.RunResponse, None]:
        model = lease.model
        started = time.perf_counter()
        params = stage_codec.params_from_request(request, model.describe().param_defaults)
        model.validate(params)
        if self._batcher.batchable(model, params):
            async with contextlib.aclosing(
                self._run_batched(request, context, lease, params, started)
            ) as batched:
                async for response in batched:
                    yield response
            return
        await self._slots.acquire()
        cancellation = _CallCancellation(context.time_remaining())
        try:
            queued = time.perf_counter()
            try:
                inputs = await asyncio.to_thread(self._load_inputs, request)
                model.validate_inputs(params, inputs)
            except BaseException:
                self._slots.release()  # the worker never started: it cannot release it
                raise
            loaded = time.perf_counter()
            output = None
            async for event in self._compute(lease, params, inputs, cancellation, started):
                if isinstance(event, StageOutput):
                    output = event
                else:
                    yield event
            assert output is not None
            image = output.image
            computed = time.perf_counter()
            artifact = await asyncio.to_thread(self._store_output, image)
            stored = time.perf_counter()
        except Cancelled as err:
            cancellation.reraise(err)
        finally:
            cancellation.set()
        timing = common_pb2.Timing(
            queue_ms=_ms(started, queued),
            load_inputs_ms=_ms(queued, loaded),
            compute_ms=_ms(loaded, computed),
            store_output_ms=_ms(computed, stored),
            total_ms=_ms(started, stored),
        )
        yield self._result(request, model, output, artifact, timing)

    async def _run_batched(
        self,
        request: stage_pb2.RunRequest,
        context: grpc.aio.ServicerContext,
        lease: Lease,
        params: StageParams,
        started: float,
    ) -> AsyncGenerator[stage_pb2.RunResponse, None]:
        """One call through the dynamic batcher: its own progress, output and
        timing; its queue time includes the wait for the batch to form."""
        model = lease.model
        cancellation = _CallCancellation(context.time_remaining())
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int] | object] = asyncio.Queue()

        def progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (step, total))

        try:
            inputs = await asyncio.to_thread(self._load_inputs, request)
            model.validate_inputs(params, inputs)
            loaded = time.perf_counter()
            call = asyncio.ensure_future(
                self._batcher.submit(
                    model, params, inputs, progress, cancellation, lease.keep_until
                )
            )
            call.add_done_callback(lambda _: events.put_nowait(_DONE))
            step_time = metrics.STAGE_STEP_DURATION.labels(self._stage)
            last = None
            try:
                while (item := await events.get()) is not _DONE:
                    assert isinstance(item, tuple)
                    now = time.perf_counter()
                    if last is not None:
                        step_time.observe(now - last)
                    last = now
                    yield stage_pb2.RunResponse(
                        progress=stage_pb2.Progress(
                            step=item[0], total_steps=item[1], elapsed_ms=_ms(started, now)
                        )
                    )
                output, computing = await call
            finally:
                call.cancel()  # the caller went away: leave the batch
            computed = time.perf_counter()
            artifact = await asyncio.to_thread(self._store_output, output.image)
            stored = time.perf_counter()
        except Cancelled as err:
            cancellation.reraise(err)
        finally:
            cancellation.set()
        timing = common_pb2.Timing(
            queue_ms=_ms(loaded, computing),
            load_inputs_ms=_ms(started, loaded),
            compute_ms=_ms(computing, computed),
            store_output_ms=_ms(computed, stored),
            total_ms=_ms(started, stored),
        )
        yield self._result(request, model, output, artifact, timing)

    def _result(
        self,
        request: stage_pb2.RunRequest,
        model: StageModel,
        output: StageOutput,
        artifact: Artifact,
        timing: common_pb2.Timing,
    ) -> stage_pb2.RunResponse:
        image = output.image
        log.info(
            "run.done",
            job_id=request.job_id,
            output=artifact.key,
            **{k: round(v, 1) for k, v in _fields(timing)},
        )
        result = stage_pb2.StageResult(
            output=stage_codec.artifact_ref(artifact),
            model=stage_codec.model_info(model.describe().identity),
            timing=timing,
            width=image.width,
            height=image.height,
        )
        if output.text_check is not None:
            result.text_check.CopyFrom(stage_codec.text_check(output.text_check))
        return stage_pb2.RunResponse(result=result)

    async def _compute(
        self,
        lease: Lease,
        params: StageParams,
        inputs: StageInputs,
        cancellation: _CallCancellation,
        started: float,
    ) -> AsyncIterator[stage_pb2.RunResponse | StageOutput]:
        """Run the model in a worker thread; yield progress, then its output.

        The execution slot is released when the worker finishes, not when this
        call ends: a cancelled call keeps its slot until the model has stopped
        at its next step check, so the stage never runs more than its capacity.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int] | object] = asyncio.Queue()

        def progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (step, total))

        future = loop.run_in_executor(
            self._executor, lease.model.run_with_report, params, inputs, progress, cancellation
        )
        lease.keep_until(future)  # a swap unloads this model only after the worker ends
        future.add_done_callback(lambda _: self._slots.release())
        future.add_done_callback(lambda _: events.put_nowait(_DONE))
        future.add_done_callback(_log_worker_end)
        self._batch_sizes.observe(1)  # a call the batcher does not batch runs alone
        step_time = metrics.STAGE_STEP_DURATION.labels(self._stage)
        last = time.perf_counter()
        while (item := await events.get()) is not _DONE:
            assert isinstance(item, tuple)
            step, total = item
            now = time.perf_counter()
            step_time.observe(now - last)
            last = now
            yield stage_pb2.RunResponse(
                progress=stage_pb2.Progress(
                    step=step, total_steps=total, elapsed_ms=_ms(started, time.perf_counter())
                )
            )
        yield await future

    def _load_inputs(self, request: stage_pb2.RunRequest) -> StageInputs:
        return StageInputs(
            image=self._read_image(request.image, "image") if request.HasField("image") else None,
            mask=self._read_image(request.mask, "mask") if request.HasField("mask") else None,
        )

    def _read_image(self, ref: common_pb2.ArtifactRef, field: str) -> Image.Image:
        if not ref.key:
            raise InvalidArgument(f"{field}.key", "must not be empty")
        data = get_artifact(self._store, ref.key, ref.sha256, field=field)
        return decode_image(data, field=field)

    def _store_output(self, image: Image.Image) -> Artifact:
        return put_artifact(self._store, encode_png(image), prefix=self._output_prefix)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _fields(timing: common_pb2.Timing) -> list[tuple[str, float]]:
    return [(f.name, getattr(timing, f.name)) for f in timing.DESCRIPTOR.fields]


def _log_worker_end(future: asyncio.Future[StageOutput]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.info("run.stopped", error=type(error).__name__, detail=str(error))
