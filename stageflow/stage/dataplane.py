"""The stage data plane: one Run call, from decoded request to stored output.

Every call takes the same path: validate its params (INVALID_ARGUMENT before
any work), be admitted (RESOURCE_EXHAUSTED beyond `max_concurrency` +
`max_queue`), read and check its inputs, run in a batch (a call that cannot
batch is a batch of one; stageflow.stage.batcher), store the output. One
progress loop streams the model's steps; each call stops at the model's next
step check when its caller goes away or its deadline passes, and keeps the
timing of each phase. The model is held (model_holder.Lease) until its worker
ends, so a hot swap never unloads a model under a running call.

No gRPC and no generated code here: the servicer decodes the request into a
`StageCall` and encodes the `Progress` and `Finished` events.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from PIL import Image

from stageflow.core import limits
from stageflow.core.artifacts import Artifact, get_artifact, put_artifact
from stageflow.core.errors import Cancelled, DeadlineExceeded, InvalidArgument
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore, check_key
from stageflow.inference.interface import (
    Latents,
    ModelDescription,
    ModelIdentity,
    StageInputs,
    StageModel,
    StageOutput,
    StageParams,
)
from stageflow.serving import metrics
from stageflow.stage.batcher import DynamicBatcher
from stageflow.stage.images import decode_image, encode_png, open_image
from stageflow.stage.latents import MEDIA_TYPE as LATENTS_MEDIA_TYPE
from stageflow.stage.latents import decode_latents, encode_latents
from stageflow.stage.model_holder import Lease, ModelHolder
from stageflow.stage.slots import ExecutionSlots

log = get_logger(__name__)

_DONE = object()


@dataclass(frozen=True)
class InputRef:
    """An input artifact of the call; `field` names it in errors ("image", "mask")."""

    field: str
    key: str
    sha256: str


@dataclass(frozen=True)
class StageCall:
    """A decoded Run request."""

    params: StageParams
    image: InputRef | None = None
    mask: InputRef | None = None
    # Instead of an image: the previous diffusion stage's latents (latent hand-off).
    latents: InputRef | None = None
    # Seconds left before the caller's deadline (None: no deadline).
    time_remaining: float | None = None
    job_id: str = ""
    # Where in the store the output goes ("": the stage's default prefix).
    output_prefix: str = ""


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    elapsed_ms: float  # since the call arrived


@dataclass(frozen=True)
class Timing:
    """Where a call's time went, in the order of its phases."""

    load_inputs_ms: float  # validating, reading and decoding the inputs
    queue_ms: float  # waiting for its batch to form and for an execution slot
    compute_ms: float  # the model call (the whole batch's)
    store_output_ms: float  # encoding and writing the output artifact
    total_ms: float  # the whole call


@dataclass(frozen=True)
class Finished:
    output: StageOutput
    artifact: Artifact
    model: ModelIdentity
    timing: Timing


class CallCancellation:
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


class _Clock:
    """time.perf_counter() at each phase boundary of one call."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.loaded = self.computing = self.computed = self.stored = self.started

    def timing(self) -> Timing:
        return Timing(
            load_inputs_ms=_ms(self.started, self.loaded),
            queue_ms=_ms(self.loaded, self.computing),
            compute_ms=_ms(self.computing, self.computed),
            store_output_ms=_ms(self.computed, self.stored),
            total_ms=_ms(self.started, self.stored),
        )


class StageDataPlane:
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
        """`stage` (base, refine, upscale) labels the metrics. `max_batch_size`
        > 1 batches the calls of models that can batch their params."""
        # A holder, so that StageAdminService can swap the model under running calls.
        self._models = model if isinstance(model, ModelHolder) else ModelHolder(model)
        self._store = store
        self._output_prefix = output_prefix
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.ready = False
        self._slots = ExecutionSlots(max_concurrency, max_queue)
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="stage")
        self._batcher = DynamicBatcher(
            self._slots,
            self._executor,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            on_batch=metrics.STAGE_BATCH_SIZE.labels(stage).observe,
        )
        self._step_time = metrics.STAGE_STEP_DURATION.labels(stage)
        # Read at scrape time, so the gauges are never stale.
        metrics.STAGE_QUEUE_DEPTH.labels(stage).set_function(lambda: self._slots.waiting)
        metrics.STAGE_RUNNING.labels(stage).set_function(lambda: self._slots.running)

    def describe(self) -> ModelDescription:
        return self._models.current.describe()

    def lease(self) -> Lease:
        """The current model, for one call: decode with it, then `run` on it."""
        return self._models.lease()

    async def run(self, lease: Lease, call: StageCall) -> AsyncGenerator[Progress | Finished, None]:
        """Progress events, then one Finished. Raises InvalidArgument (before
        any work), ResourceExhausted, the inputs' NotFound / DataLoss /
        FailedPrecondition, and Cancelled or DeadlineExceeded when stopped."""
        model = lease.model
        clock = _Clock()
        model.validate(call.params)
        prefix = check_output_prefix(call.output_prefix) or self._output_prefix
        ticket = self._slots.admit()
        cancellation = CallCancellation(call.time_remaining)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int] | object] = asyncio.Queue()

        def progress(step: int, total: int) -> None:  # from the worker thread
            loop.call_soon_threadsafe(events.put_nowait, (step, total))

        def on_worker(worker: asyncio.Future[Any], started: float) -> None:
            lease.keep_until(worker)  # a swap unloads this model only after the worker ends
            clock.computing = started

        try:
            inputs = await asyncio.to_thread(self._load_inputs, model, call)
            clock.loaded = time.perf_counter()
            work = asyncio.ensure_future(
                self._batcher.submit(
                    ticket, model, call.params, inputs, progress, cancellation, on_worker
                )
            )
            work.add_done_callback(lambda _: events.put_nowait(_DONE))
            try:
                last: float | None = None  # the previous step's end; first: compute start
                while (item := await events.get()) is not _DONE:
                    assert isinstance(item, tuple)
                    now = time.perf_counter()
                    self._step_time.observe(now - (clock.computing if last is None else last))
                    last = now
                    yield Progress(item[0], item[1], _ms(clock.started, now))
                output = await work
            finally:
                work.cancel()  # the caller went away: leave the batch
            clock.computed = time.perf_counter()
            artifact = await asyncio.to_thread(self._store_output, output, prefix)
            clock.stored = time.perf_counter()
        except Cancelled as err:
            cancellation.reraise(err)
        finally:
            cancellation.set()
            ticket.leave()
        timing = clock.timing()
        log.info(
            "run.done",
            job_id=call.job_id,
            output=artifact.key,
            **{f.name: round(getattr(timing, f.name), 1) for f in fields(timing)},
        )
        yield Finished(output, artifact, model.describe().identity, timing)

    def _load_inputs(self, model: StageModel, call: StageCall) -> StageInputs:
        """Read the inputs, check them from their headers (sizes, presence:
        the model's validate_inputs) and only then decode them."""
        desc = model.describe()
        sides = (desc.min_side, desc.max_side)
        headers = StageInputs(
            image=self._open_image(call.image, sides) if call.image is not None else None,
            mask=self._open_image(call.mask, sides) if call.mask is not None else None,
            # Latents are small (1/64 of the pixels): decoded whole, then checked.
            latents=self._open_latents(call.latents) if call.latents is not None else None,
        )
        model.validate_inputs(call.params, headers)
        return StageInputs(
            image=None if headers.image is None else decode_image(headers.image, field="image"),
            mask=None if headers.mask is None else decode_image(headers.mask, field="mask"),
            latents=headers.latents,
        )

    def _open_image(self, ref: InputRef, sides: tuple[int, int]) -> Image.Image:
        if not ref.key:
            raise InvalidArgument(f"{ref.field}.key", "must not be empty")
        data = get_artifact(self._store, ref.key, ref.sha256, field=ref.field)
        return open_image(data, field=ref.field, sides=sides)

    def _open_latents(self, ref: InputRef) -> Latents:
        if not ref.key:
            raise InvalidArgument(f"{ref.field}.key", "must not be empty")
        data = get_artifact(self._store, ref.key, ref.sha256, field=ref.field)
        return decode_latents(data, field=ref.field)

    def _store_output(self, output: StageOutput, prefix: str) -> Artifact:
        """A PNG, or for a latent hand-off the latents' safetensors bytes."""
        if output.latents is not None:
            data = encode_latents(output.latents)
            return put_artifact(self._store, data, prefix=prefix, media_type=LATENTS_MEDIA_TYPE)
        return put_artifact(self._store, encode_png(output.image), prefix=prefix)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# An artifact key is the prefix plus ~80 characters; S3 allows 1024 bytes.
MAX_OUTPUT_PREFIX_CHARS = limits.MAX_OUTPUT_PREFIX_CHARS


def check_output_prefix(prefix: str) -> str:
    """A request's output prefix: a relative key path inside the store (and
    below the store URL's own prefix), or "" for the stage's default."""
    if not prefix:
        return ""
    if len(prefix) > MAX_OUTPUT_PREFIX_CHARS:
        raise InvalidArgument(
            "output_prefix",
            f"must be at most {MAX_OUTPUT_PREFIX_CHARS} characters, got {len(prefix)}",
        )
    bare = prefix.strip("/")
    try:
        check_key(bare, field="output_prefix")
    except InvalidArgument:
        raise InvalidArgument(
            "output_prefix",
            "must be a relative '/'-separated path without empty, '.' or '..' segments, "
            f"got {prefix[:40]!r}",
        ) from None
    return bare


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


__all__ = [
    "CallCancellation",
    "Finished",
    "InputRef",
    "Progress",
    "StageCall",
    "StageDataPlane",
    "Timing",
]
