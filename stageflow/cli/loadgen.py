"""The load generator behind `stageflow loadtest`: a small asyncio loop over grpc.aio.

Why our own loop and not Locust: the stage API is a server-streaming gRPC call
whose last message carries the server's own timing split; Locust speaks HTTP
natively, needs a custom gevent gRPC user (grpc.aio does not mix with gevent)
and would hide that split. One event loop per client process, one channel
each, and results merged afterwards keeps the client cheap enough to saturate
a stage from a 2-core machine (the report shows the client's CPU per request).

No typer here: bench/ drives `run_load` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow import kinds
from stageflow.cli.loadstats import OK, PHASES, Sample, WorkerResult, build_report, merge
from stageflow.cli.sets import typed_value
from stageflow.core.errors import InvalidArgument

ORCHESTRATOR = "orchestrator"


def stage_kinds() -> tuple[str, ...]:
    """What `--kind` takes for one stage: each registered kind's model kind."""
    return tuple(k.model_kind for k in kinds.all_kinds())


def load_kinds() -> tuple[str, ...]:
    return (*stage_kinds(), ORCHESTRATOR)


def needs_input(kind: str) -> bool:
    """Whether a load test of `kind` needs an input image seeded into the store."""
    return kind != ORCHESTRATOR and not kinds.by_model_kind(kind).first


@dataclass(frozen=True)
class InputRef:
    """An input seeded into the object store once and reused by every request."""

    key: str
    sha256: str
    size_bytes: int
    media_type: str = "image/png"


@dataclass(frozen=True)
class LoadConfig:
    """One load test. Picklable: it travels to the client processes as is."""

    address: str
    kind: str
    # Fields of the kind's params message (stage kinds; enums as numbers), or
    # for `orchestrator` SubmitJob's width/height plus "base.steps"-style options.
    params: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = "a load test"
    image: InputRef | None = None
    concurrency: int | None = 1  # closed loop: requests in flight at once
    rate: float | None = None  # open loop: requests per second (overrides concurrency)
    arrival: str = "poisson"  # open loop: "poisson" or "fixed" gaps
    duration_s: float | None = 10.0
    requests: int | None = None  # stop after this many measured requests instead
    warmup_s: float = 0.0
    processes: int = 1
    seed: int | None = None  # fixed seed for every request; None varies it
    job_id: str = ""  # sent as RunRequest.job_id and x-job-id; warm-up adds "-warmup"
    timeout_s: float = 120.0  # per-request deadline

    def __post_init__(self) -> None:
        if self.kind not in load_kinds():
            raise InvalidArgument(
                "kind", f"must be one of {', '.join(load_kinds())}, got {self.kind!r}"
            )
        if self.rate is None and not (self.concurrency and self.concurrency >= 1):
            raise InvalidArgument("concurrency", "must be >= 1 (or give a rate)")
        if self.rate is not None and self.rate <= 0:
            raise InvalidArgument("rate", f"must be > 0, got {self.rate}")
        if self.arrival not in ("poisson", "fixed"):
            raise InvalidArgument("arrival", f"must be poisson or fixed, got {self.arrival!r}")
        if (self.duration_s is None) == (self.requests is None):
            raise InvalidArgument("duration", "give exactly one of a duration or a request count")
        if self.processes < 1:
            raise InvalidArgument("processes", f"must be >= 1, got {self.processes}")
        if needs_input(self.kind) and self.image is None:
            raise InvalidArgument("image", f"a {self.kind} load test needs a seeded input image")

    def public(self) -> dict[str, Any]:
        """The config as the report shows it."""
        out = {k: v for k, v in self.__dict__.items() if k != "image"}
        out["params"] = dict(self.params)
        out["image"] = self.image.__dict__ if self.image else None
        return out


# -- parameters ----------------------------------------------------------------


def _option_stages() -> dict[str, type[Message]]:
    """Stage -> its options message, for the kinds that have one (the client
    submits those)."""
    return {k.name: k.options for k in kinds.all_kinds() if isinstance(k.options, type)}


def _generic_value(kind: kinds.Kind, key: str, raw: str) -> Any:
    """A `--set` value of a kind without a params message, typed by its options."""
    option = kinds.options(kind).get(key)
    if option is None:
        allowed = ", ".join(sorted(kinds.options(kind)))
        raise InvalidArgument(f"--set {key}", f"unknown key; allowed: {allowed}")
    if option.type is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidArgument(f"--set {key}", f"expected true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if option.type in (int, float):
        try:
            return option.type(raw)
        except ValueError:
            raise InvalidArgument(f"--set {key}", f"expected a number, got {raw!r}") from None
    return raw


def parse_sets(kind: str, sets: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs onto the kind's params, typed by the proto field.

    Stage kinds take fields of their params message (Txt2ImgParams ...:
    steps=10, width=64, mode=lanczos; a kind without one, its declared
    options); `orchestrator` takes width, height and STAGE.FIELD keys of the
    job's stage options (base.steps=10)."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument("--set", f"expected KEY=VALUE, got {item!r}")
        if kind == "orchestrator":
            if key in ("width", "height"):
                try:
                    out[key] = int(raw)
                except ValueError:
                    raise InvalidArgument(
                        f"--set {key}", f"expected a number, got {raw!r}"
                    ) from None
                continue
            stage, _, name = key.partition(".")
            if stage not in _option_stages() or not name:
                raise InvalidArgument(
                    f"--set {key}",
                    "expected width, height or STAGE.FIELD (base.steps=10), STAGE one of "
                    + ", ".join(_option_stages()),
                )
            fields = _option_stages()[stage].DESCRIPTOR.fields_by_name
            enum_numbers = False  # the orchestrator client expands enum names itself
        else:
            name = key
            stage_kind = kinds.by_model_kind(kind)
            if stage_kind.params_message is None:
                out[key] = _generic_value(stage_kind, key, raw)
                continue
            fields = stage_kind.params_message.DESCRIPTOR.fields_by_name
            enum_numbers = True
        fd = cast(Mapping[str, FieldDescriptor], fields).get(name)
        if fd is None or fd.type == FieldDescriptor.TYPE_MESSAGE:
            allowed = ", ".join(sorted(fields.keys()))
            raise InvalidArgument(f"--set {key}", f"unknown key; allowed: {allowed}")
        out[key] = typed_value(fd, key, raw, enum_numbers=enum_numbers)
    return out


# -- inputs ----------------------------------------------------------------------


def seed_input(store: Any, width: int, height: int, seed: int = 0) -> InputRef:
    """Put one noise PNG of the given size into the store (content-addressed, so
    a second run reuses the same object) and return its reference."""
    from PIL import Image

    from stageflow.core.artifacts import put_artifact
    from stageflow.stage.images import encode_png

    noise = random.Random(seed).randbytes(width * height * 3)
    png = encode_png(Image.frombytes("RGB", (width, height), noise))
    artifact = put_artifact(store, png, prefix="loadtest/inputs")
    return InputRef(artifact.key, artifact.sha256, artifact.size_bytes, artifact.media_type)


# -- one request -----------------------------------------------------------------


def stage_request(config: LoadConfig, *, seed: int, request_id: str, job_id: str) -> Any:
    """The RunRequest for one call of a stage kind."""
    from stageflow.v1 import common_pb2, stage_pb2

    kind = kinds.by_model_kind(config.kind)
    cls = kind.params_message
    names = cls.DESCRIPTOR.fields_by_name if cls is not None else kinds.options(kind)
    values = dict(config.params)
    if "prompt" in names:
        values.setdefault("prompt", config.prompt)
    if "seed" in names and "seed" not in config.params:
        values["seed"] = seed
    request = stage_pb2.RunRequest(
        request_id=request_id,
        job_id=job_id,
        output_prefix="loadtest/outputs",
    )
    if cls is None:
        request.generic.kind = kind.model_kind
        request.generic.values.update(values)
    else:
        getattr(request, kinds.params_field(kind)).CopyFrom(cls(**values))
    if config.image is not None:
        request.image.CopyFrom(
            common_pb2.ArtifactRef(
                key=config.image.key,
                sha256=config.image.sha256,
                size_bytes=config.image.size_bytes,
                media_type=config.image.media_type,
            )
        )
    return request


def _timing(timing: Any) -> dict[str, float]:
    return {phase: float(getattr(timing, phase)) for phase in PHASES}


# (seed, request_id, job_id) -> (status code, server timing, error detail)
Call = Callable[[int, str, str], Awaitable[tuple[str, dict[str, float] | None, str]]]


@contextlib.asynccontextmanager
async def _caller(config: LoadConfig) -> Any:
    """A `Call` over one channel."""
    import grpc

    from stageflow.serving.channels import client_channel
    from stageflow.v1 import stage_pb2_grpc

    if config.kind == ORCHESTRATOR:
        from stageflow.cli.render import job_state_name
        from stageflow.client import StageflowClient, StageflowClientError

        async with StageflowClient(config.address) as client:
            submit_kwargs = _orchestrator_kwargs(config)
            await _reachable(config.address, client.pipelines())

            async def job(seed: int, request_id: str, job_id: str) -> tuple[str, Any, str]:
                try:
                    submitted = await client.submit(**submit_kwargs, seed=seed)
                    finished = None
                    async for event in client.watch(submitted.job_id):
                        if event.HasField("finished"):
                            finished = event.finished
                except StageflowClientError as err:
                    return err.status, None, err.message
                if finished is None:
                    return "NO_RESULT", None, "the job stream ended early"
                state = job_state_name(finished.state)
                if state != "succeeded":
                    return f"JOB_{state.upper()}", None, finished.error
                # The job's server time: the stage splits summed.
                timing = dict.fromkeys(PHASES, 0.0)
                for stage in finished.stages:
                    for phase, value in _timing(stage.timing).items():
                        timing[phase] += value
                return OK, timing, ""

            yield job
        return

    async with client_channel(config.address) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)

        async def run(seed: int, request_id: str, job_id: str) -> tuple[str, Any, str]:
            request = stage_request(config, seed=seed, request_id=request_id, job_id=job_id)
            metadata = (("x-job-id", job_id), ("x-request-id", request_id))
            try:
                async for event in stub.Run(request, timeout=config.timeout_s, metadata=metadata):
                    if event.HasField("result"):
                        return OK, _timing(event.result.timing), ""
            except grpc.aio.AioRpcError as err:
                return err.code().name, None, err.details() or ""
            return "NO_RESULT", None, "the stream ended without a result"

        await _reachable(config.address, channel.channel_ready())
        yield run


# How long the target may take to answer at all before the load test gives up.
CONNECT_SECONDS = 10.0


async def _reachable(address: str, probe: Awaitable[Any]) -> None:
    """Await `probe` (a first call, or the channel getting ready); a clear
    LoadTestError when the target cannot be reached."""
    from stageflow.client import DeadlineExceeded, StageflowClientError, Unavailable

    try:
        await asyncio.wait_for(probe, timeout=CONNECT_SECONDS)
    except (TimeoutError, Unavailable, DeadlineExceeded) as err:
        why = str(err) or f"no answer within {CONNECT_SECONDS:g} s"
        raise LoadTestError(f"cannot connect to {address}: {why}") from None
    except StageflowClientError:
        pass  # it answered (UNIMPLEMENTED, UNAUTHENTICATED, ...): it is there


def _orchestrator_kwargs(config: LoadConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"base": config.prompt, "style": ""}
    for key, value in config.params.items():
        if key in ("width", "height"):
            kwargs[key] = value
        else:
            stage, _, name = key.partition(".")
            kwargs.setdefault(f"{stage}_options", {})[name] = value
    return kwargs


# -- one client process ------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """This process's part of the load."""

    index: int
    concurrency: int = 0
    rate: float = 0.0
    requests: int | None = None


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as whole numbers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def shares(config: LoadConfig) -> list[Share]:
    """How the load divides over the client processes (never more processes
    than there are requests in flight or to send)."""
    processes = config.processes
    if config.rate is None:
        processes = min(processes, config.concurrency or 1)
    if config.requests is not None:
        processes = min(processes, max(config.requests, 1))
    counts = split(config.requests, processes) if config.requests is not None else None
    # Open loop: the rate decides how many are in flight, not a concurrency.
    concurrency = (
        split(config.concurrency or 1, processes) if config.rate is None else [0] * processes
    )
    return [
        Share(
            index=i,
            concurrency=concurrency[i],
            rate=(config.rate or 0.0) / processes,
            requests=counts[i] if counts is not None else None,
        )
        for i in range(processes)
    ]


class _Clock:
    """Warm-up and measurement windows, and the measured-request budget."""

    def __init__(self, config: LoadConfig, share: Share) -> None:
        now = time.monotonic()
        self.warm_end = now + config.warmup_s
        self.end = None if config.duration_s is None else self.warm_end + config.duration_s
        self.budget = share.requests

    def warming(self) -> bool:
        return time.monotonic() < self.warm_end

    def take(self) -> bool:
        """May one more request start now?"""
        if self.end is not None and time.monotonic() >= self.end:
            return False
        if self.warming() or self.budget is None:
            return True
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True


@dataclass
class LiveCounts:
    """Requests finished so far (warm-up included) and how many failed, for a
    live display; written by the load loop, read by the display's thread."""

    done: int = 0
    errors: int = 0
    measuring: bool = False


async def run_share(
    config: LoadConfig,
    share: Share,
    ready: Callable[[], None] = lambda: None,
    live: LiveCounts | None = None,
) -> WorkerResult:
    """Drive this process's share of the load; `ready` is called once connected
    (the multi-process runner waits there for every process); `live`, when
    given, is kept up to date as requests finish."""
    live = live if live is not None else LiveCounts()
    result = WorkerResult()
    rng = random.Random(f"{config.job_id}/{share.index}")
    counter = 0

    async with _caller(config) as call:
        await asyncio.to_thread(ready)
        clock = _Clock(config, share)
        cpu0, wall0 = time.process_time(), time.monotonic()

        async def one() -> None:
            nonlocal counter
            counter += 1
            warm = clock.warming()
            request_id = f"{config.job_id}-{share.index}-{counter}"
            job_id = f"{config.job_id}-warmup" if warm else config.job_id
            seed = config.seed if config.seed is not None else rng.randrange(2**31)
            result.sent += 1
            sent_at, t0 = time.time(), time.perf_counter()
            code, timing, detail = await call(seed, request_id, job_id)
            live.done += 1
            live.measuring = not clock.warming()
            if code != OK:
                live.errors += 1
                result.error_details.setdefault(code, detail)
            if not warm:
                result.samples.append(Sample(sent_at, time.perf_counter() - t0, code, timing))

        if config.rate is None:

            async def closed_loop() -> None:
                while clock.take():
                    await one()

            await asyncio.gather(*(closed_loop() for _ in range(share.concurrency)))
        else:
            tasks: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while True:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    result.max_send_lag_s = max(result.max_send_lag_s, -delay)
                if not clock.take():
                    break
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                gap = 1 / share.rate
                next_at += rng.expovariate(share.rate) if config.arrival == "poisson" else gap
            await asyncio.gather(*tasks)
        result.cpu_s = time.process_time() - cpu0
        result.wall_s = time.monotonic() - wall0
    return result


def _worker_main(config: LoadConfig, share: Share, barrier: Any, results: Any) -> None:
    """Entry point of a spawned client process: one event loop, one channel."""
    try:
        outcome: Any = asyncio.run(run_share(config, share, ready=barrier.wait))
    except BaseException as err:  # handed to the parent, which reports it
        barrier.abort()
        outcome = f"{type(err).__name__}: {err}"
    results.put((share.index, outcome))


class LoadTestError(RuntimeError):
    """A client process failed (not a request: those are counted by code)."""


def run_load(config: LoadConfig, live: LiveCounts | None = None) -> dict[str, Any]:
    """Run the load test and return its report (see `loadstats.build_report`);
    `live` counts finished requests as they come (one client process only:
    with several, each counts in its own process and `live` stays at 0)."""
    if not config.job_id:
        config = replace(config, job_id=f"loadtest-{uuid.uuid4().hex[:12]}")
    parts = shares(config)
    if len(parts) == 1:
        outcomes = [asyncio.run(run_share(config, parts[0], live=live))]
    else:
        outcomes = _run_processes(config, parts)
    return build_report(merge(outcomes), config=config.public(), processes=len(parts))


def _run_processes(config: LoadConfig, parts: list[Share]) -> list[WorkerResult]:
    # spawn, not fork: a forked grpc runtime is not safe.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(parts), timeout=60)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(config, part, barrier, results), daemon=True)
        for part in parts
    ]
    for proc in procs:
        proc.start()
    budget = config.warmup_s + (config.duration_s or 0) + config.timeout_s + 120
    deadline = time.monotonic() + budget
    outcomes: dict[int, Any] = {}
    try:
        while len(outcomes) < len(parts):
            try:
                index, outcome = results.get(timeout=1)
            except queue.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                    raise LoadTestError("a client process died or overran its time") from None
                continue
            outcomes[index] = outcome
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    failures = [o for o in outcomes.values() if isinstance(o, str)]
    if failures:
        raise LoadTestError(f"client process failed: {failures[0]}")
    return [outcomes[i] for i in sorted(outcomes)]
