"""Runs jobs through the stage pipeline and tells watchers what happens.

One asyncio task per job, at most `max_running_jobs` past the semaphore at once.
The task owns its job's state: it mutates the in-memory `Job`, persists it at
every stage boundary, and publishes events to watchers. Stages only ever
exchange artifact keys: each stage's input is the previous stage's output.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context

from stageflow.core.errors import FailedPrecondition, InvalidArgument, NotFound
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator.bundle import (
    DEFAULT_PIPELINE,
    build_run_request,
    compose_prompt,
    input_scales,
    pipeline_of,
    with_input,
)
from stageflow.orchestrator.cache import StageCache, cache_key
from stageflow.orchestrator.jobs import UNFINISHED, JobStore, new_job_id
from stageflow.orchestrator.replicas import FALLBACK, PRIMARY, Route, StageCaller
from stageflow.orchestrator.rerun import apply_overrides
from stageflow.orchestrator.scheduler import PriorityGate, StageScheduler
from stageflow.orchestrator.spec import (
    DEFAULT_SPEC,
    PipelineSpec,
    builtin_spec,
    fallback_services,
    services_of,
    with_defaults,
    with_fallback,
)
from stageflow.orchestrator.stage_client import StageCallError, StageClient
from stageflow.orchestrator.validation import check_against_stage, check_model, check_request
from stageflow.serving import metrics, tracing
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2

Job = orchestrator_pb2.Job
StageRun = orchestrator_pb2.StageRun
WatchJobResponse = orchestrator_pb2.WatchJobResponse

TERMINAL = frozenset(
    {
        orchestrator_pb2.JOB_STATE_SUCCEEDED,
        orchestrator_pb2.JOB_STATE_FAILED,
        orchestrator_pb2.JOB_STATE_CANCELLED,
    }
)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A stage may be redeployed with another model; re-ask for its limits now and then.
DESCRIBE_TTL_SECONDS = 60.0

log = get_logger(__name__)


class RunnerSettings(Protocol):
    """The part of OrchestratorSettings the runner reads."""

    output_prefix: str
    stage_timeout_seconds: float
    max_running_jobs: int
    final_url_expiry_seconds: int
    stage_cache: bool


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _touch(job: Job) -> None:
    job.updated_at.CopyFrom(_now())


def _deadline(job: Job) -> float | None:
    """The job's deadline in wall-clock seconds (it outlives a restart), or None."""
    if not job.request.HasField("deadline_seconds"):
        return None
    return job.created_at.ToNanoseconds() / 1e9 + job.request.deadline_seconds


def _copy(job: Job) -> Job:
    out = Job()
    out.CopyFrom(job)
    return out


class JobRunner:
    def __init__(
        self,
        stages: Mapping[str, StageClient],
        jobs: JobStore,
        settings: RunnerSettings,
        store: ObjectStore | None = None,
        *,
        pipeline: Sequence[str] = DEFAULT_PIPELINE,
        specs: Mapping[str, PipelineSpec] | None = None,
        stage_limits: Mapping[str, int] | None = None,
        caller: StageCaller | None = None,
    ) -> None:
        """`specs` by name (pipelines/*.yaml); without them a built-in "default"
        spec runs `pipeline` with the built-in defaults. `stage_limits` caps the
        calls in flight per stage service (else its Describe's capacity).
        `caller` retries, backs off and falls back (default: StageCaller())."""
        if specs is None:
            missing = [name for name in pipeline if name not in stages]
            if not pipeline or missing:
                raise ValueError(
                    f"pipeline {list(pipeline)} needs a client for each stage: {missing}"
                )
            specs = {DEFAULT_SPEC: builtin_spec(pipeline)}
        for spec in specs.values():
            used = set(services_of(spec, spec.order).values()) | fallback_services(spec)
            unknown = sorted(used - set(stages))
            if unknown:
                raise ValueError(f"pipeline spec {spec.name!r} names unconfigured stages {unknown}")
        self._specs = dict(specs)
        self._cache = StageCache(jobs, store) if settings.stage_cache else None
        self._rerun_lock = asyncio.Lock()
        self._stages = dict(stages)
        self._jobs = jobs
        self._settings = settings
        self._store = store
        # Jobs past this gate run; interactive ones are let in before bulk ones.
        self._slots = PriorityGate(settings.max_running_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, Job] = {}  # jobs with a task; fresher than the DB (step counts)
        self._subscribers: dict[str, set[asyncio.Queue[WatchJobResponse]]] = {}
        self._cancelling: set[str] = set()
        self._describes: dict[str, tuple[float, stage_pb2.DescribeResponse]] = {}
        self._scheduler = StageScheduler(self._described, stage_limits)
        self._caller = caller or StageCaller()

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Resume jobs left QUEUED or RUNNING by a previous process, from their
        first stage that has not succeeded (finished stages are not recomputed)."""
        for job in await self._jobs.unfinished():
            if job.job_id in self._tasks:
                continue
            for run in job.stages:
                if run.state != orchestrator_pb2.STAGE_STATE_SUCCEEDED:
                    run.state = orchestrator_pb2.STAGE_STATE_PENDING
                    run.step = run.total_steps = 0
                    run.error = ""
            job.state = orchestrator_pb2.JOB_STATE_QUEUED
            log.info("job.resume", job_id=job.job_id)
            self._start_task(job)

    async def close(self) -> None:
        """Stop running jobs without marking them: the next start() resumes them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- API ------------------------------------------------------------------

    async def submit(self, request: orchestrator_pb2.SubmitJobRequest) -> Job:
        """Validate, persist QUEUED and start the job; a repeated request_id returns
        the first job. Raises InvalidArgument naming the offending field."""
        check_request(request)
        spec = self._spec(request.pipeline)
        pipeline = pipeline_of(request, spec.order)
        services = services_of(spec, pipeline)
        missing = [name for name in pipeline if services[name] not in self._stages]
        if missing:
            raise InvalidArgument(
                "stages", f"no {', '.join(missing)} stage is configured in this orchestrator"
            )
        job_id = new_job_id()
        tracing.tag_job(job_id)
        effective = with_defaults(request, spec)
        runs = {
            name: build_run_request(
                name, effective, job_id=job_id, output_prefix=self._settings.output_prefix
            )
            for name in pipeline
        }
        await self._check_against_stages(effective, spec, pipeline, runs)
        now = _now()
        job = Job(
            job_id=job_id,
            state=orchestrator_pb2.JOB_STATE_QUEUED,
            bundle=request.bundle,
            prompt=compose_prompt(request.bundle),
            seed=request.seed,
            width=request.width,
            height=request.height,
            stages=[
                StageRun(
                    stage=name,
                    service=services[name],
                    state=orchestrator_pb2.STAGE_STATE_PENDING,
                    request=runs[name],
                )
                for name in pipeline
            ],
            created_at=now,
            updated_at=now,
            request=request,
            pipeline=spec.name,
            pipeline_sha256=spec.sha256,
            version=1,
        )
        stored, created = await self._jobs.create(job, request.request_id)
        if not created:
            tracing.tag_job(stored.job_id)
            live = self._live.get(stored.job_id)
            return _copy(live) if live is not None else stored
        log.info("job.submitted", job_id=job_id, idempotency_key=request.request_id)
        self._start_task(job)
        return _copy(job)

    async def rerun(self, request: orchestrator_pb2.RerunJobRequest) -> Job:
        """Version N+1 of a finished job: stages before `from_stage` keep their
        outputs, the rest run again with the overrides merged in."""
        async with self._rerun_lock:  # two reruns of one job must not both be N+1
            task = self._tasks.get(request.job_id)
            if task is not None:
                live = self._live.get(request.job_id)
                if live is not None and live.state not in TERMINAL:
                    raise FailedPrecondition(
                        f"job {request.job_id} is still running; wait for it or cancel it"
                    )
                # Finished (watchers may have seen it) but its task is still closing.
                await asyncio.wait({task})
            previous = await self.get(request.job_id)
            spec = self._spec(previous.pipeline)
            job = apply_overrides(previous, request)
            effective = with_defaults(job.request, spec)
            names = [run.stage for run in job.stages]
            first = names.index(request.from_stage)
            for run in job.stages[first:]:
                version_id = f"{job.job_id}.v{job.version}"
                run.request.CopyFrom(
                    build_run_request(
                        run.stage,
                        effective,
                        job_id=job.job_id,
                        output_prefix=self._settings.output_prefix,
                    )
                )
                run.request.request_id = f"{version_id}.{run.stage}"
            runs = {run.stage: run.request for run in job.stages[first:]}
            await self._check_against_stages(effective, spec, tuple(names), runs)
            now = _now()
            job.created_at.CopyFrom(now)
            job.updated_at.CopyFrom(now)
            job.pipeline_sha256 = spec.sha256
            previous.version = previous.version or 1
            await self._jobs.add_version(previous, job)
            log.info(
                "job.rerun", job_id=job.job_id, version=job.version, from_stage=request.from_stage
            )
            self._start_task(job)
            return _copy(job)

    async def versions(self, job_id: str) -> list[Job]:
        """Every version of the job, oldest first; the last is `get(job_id)`."""
        latest = await self.get(job_id)
        return [*await self._jobs.versions(job_id), latest]

    async def artifact(
        self, request: orchestrator_pb2.GetArtifactRequest
    ) -> tuple[common_pb2.ArtifactRef, bytes]:
        """The artifact of a job version the request names, read from the store
        and checked against its sha256 (DATA_LOSS otherwise)."""
        # Imported here so this method stays self-contained (runner.py is being split).
        from stageflow.core.artifacts import get_artifact
        from stageflow.orchestrator.artifacts import check_artifact_request, select_artifact

        check_artifact_request(request)
        ref = select_artifact(request, await self.versions(request.job_id))
        if self._store is None:
            raise FailedPrecondition("this orchestrator has no object store to read from")
        data = await asyncio.to_thread(get_artifact, self._store, ref.key, ref.sha256)
        return ref, data

    def _spec(self, name: str) -> PipelineSpec:
        spec = self._specs.get(name or DEFAULT_SPEC)
        if spec is None:
            known = ", ".join(sorted(self._specs))
            raise InvalidArgument("pipeline", f"unknown pipeline spec {name!r}; known: {known}")
        return spec

    async def get(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("job_id", "must not be empty")
        live = self._live.get(job_id)
        if live is not None:
            return _copy(live)
        job = await self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if job.state == orchestrator_pb2.JOB_STATE_SUCCEEDED:
            # A presigned URL expires; every GetJob hands out a fresh one.
            job.final_url = await self._final_url(job.job_id, job.final) or job.final_url
        return job

    async def list_jobs(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        state: orchestrator_pb2.JobState = orchestrator_pb2.JOB_STATE_UNSPECIFIED,
    ) -> list[Job]:
        """Newest first; only jobs in `state` unless it is UNSPECIFIED."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be in [1, {MAX_PAGE_SIZE}], got {page_size}")
        wanted = None if state == orchestrator_pb2.JOB_STATE_UNSPECIFIED else state
        jobs = await self._jobs.list_jobs(page_size, wanted)
        return [_copy(self._live[j.job_id]) if j.job_id in self._live else j for j in jobs]

    async def cancel(self, job_id: str) -> Job:
        """Cancel the job and its running stage call; a finished job is returned unchanged."""
        task = self._tasks.get(job_id)
        if task is None:
            job = await self.get(job_id)
            if job.state in UNFINISHED:  # stored unfinished but not resumed yet
                await self._mark_cancelled(job)
            return job
        if job_id not in self._cancelling:
            self._cancelling.add(job_id)
            task.cancel()
        # Shielded from our own caller's cancellation: the task finishes regardless.
        await asyncio.wait({task})
        return await self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[WatchJobResponse]:
        """The snapshot, then every event, ending with `finished`."""
        queue: asyncio.Queue[WatchJobResponse] = asyncio.Queue()
        # Subscribe before reading the snapshot: an event in between is seen
        # (at worst twice), never lost.
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            job = await self.get(job_id)
            yield WatchJobResponse(job_id=job_id, snapshot=job)
            if job.state in TERMINAL:
                yield WatchJobResponse(job_id=job_id, finished=job)
                return
            while True:
                event = await queue.get()
                yield event
                if event.WhichOneof("event") == "finished":
                    return
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[job_id]

    # --- submit-time checks ---------------------------------------------------

    async def _check_against_stages(
        self,
        request: orchestrator_pb2.SubmitJobRequest,
        spec: PipelineSpec,
        pipeline: tuple[str, ...],
        runs: Mapping[str, stage_pb2.RunRequest],
    ) -> None:
        """Check the stages in `runs` (those about to run) against their Describe."""
        services = services_of(spec, pipeline)
        checked = [name for name in pipeline if name in runs]
        descs = await asyncio.gather(*(self._describe(services[name]) for name in checked))
        scales = input_scales(pipeline)
        for name, desc in zip(checked, descs, strict=True):
            if desc is None:
                continue
            stage_spec = spec.stage(name)
            if stage_spec is not None and stage_spec.model:
                check_model(name, stage_spec.model, desc, spec.name)
            check_against_stage(name, runs[name], desc, request, scales[name])

    async def _describe(
        self, stage: str, *, fresh: bool = False
    ) -> stage_pb2.DescribeResponse | None:
        """The stage's cached Describe (a new one when `fresh`), or None when it
        cannot be reached (it then validates the request itself when the job
        gets there)."""
        cached = self._describes.get(stage)
        if not fresh and cached is not None and time.monotonic() - cached[0] < DESCRIBE_TTL_SECONDS:
            return cached[1]
        try:
            desc = await self._stages[stage].describe()
        except StageCallError as err:
            log.info("stage.describe_failed", stage=stage, error=str(err))
            return None
        self._describes[stage] = (time.monotonic(), desc)
        return desc

    def _described(self, stage: str) -> stage_pb2.DescribeResponse | None:
        """The last Describe of `stage`, however old; never calls it (the
        scheduler's limits must not cost a round trip per stage call)."""
        cached = self._describes.get(stage)
        return cached[1] if cached is not None else None

    # --- running --------------------------------------------------------------

    def _start_task(self, job: Job) -> None:
        job_id = job.job_id
        self._live[job_id] = job
        # The job's span continues the submitting call's trace (none on resume).
        parent = otel_context.get_current()
        # A fresh context: the task must not inherit the submitting call's log
        # context (its request id and method) for the rest of the job's life.
        task = asyncio.create_task(
            self._run_job(job, parent), name=f"job {job_id}", context=contextvars.Context()
        )
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _run_job(self, job: Job, parent: otel_context.Context | None = None) -> None:
        job_id = job.job_id
        span = tracing.tracer.start_as_current_span(
            "job.run", context=parent, attributes={tracing.JOB_ID: job_id}
        )
        try:
            async with self._slots.hold(job.request.priority):
                with span:
                    await self._execute(job)
        except asyncio.CancelledError:
            if job_id not in self._cancelling:
                raise  # shutdown: the stored state stays unfinished and is resumed
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._mark_cancelled(job)
        except Exception as err:  # a bug or a broken store: fail the job, keep serving
            log.exception("job.internal_error", job_id=job_id)
            await self._finish_failed(job, None, f"internal error: {err}")
        finally:
            self._live.pop(job_id, None)
            self._cancelling.discard(job_id)

    async def _execute(self, job: Job) -> None:
        job.state = orchestrator_pb2.JOB_STATE_RUNNING
        await self._persist(job)
        upstream: common_pb2.ArtifactRef | None = None
        for run in job.stages:
            if run.state != orchestrator_pb2.STAGE_STATE_SUCCEEDED:
                try:
                    await self._run_stage(job, run, upstream)
                except StageCallError as err:
                    await self._finish_failed(job, run, str(err))
                    return
            upstream = run.output
        assert upstream is not None  # the pipeline is never empty
        await self._finish_succeeded(job, upstream)

    async def _run_stage(
        self, job: Job, run: StageRun, upstream: common_pb2.ArtifactRef | None
    ) -> None:
        request = run.request if upstream is None else with_input(run.request, upstream)
        run.request.CopyFrom(request)
        run.state = orchestrator_pb2.STAGE_STATE_RUNNING
        run.cache_hit = False
        run.cache_key, fingerprint = await self._cache_key(run)
        await self._persist(job)
        self._publish(job.job_id, stage_started=orchestrator_pb2.StageStarted(stage=run.stage))
        cached = None
        if self._cache is not None and run.cache_key:
            cached = await self._cache.get(run.cache_key)
            counter = metrics.CACHE_MISSES if cached is None else metrics.CACHE_HITS
            counter.labels(run.stage).inc()
        if cached is not None:
            run.cache_hit = True
            await self._stage_succeeded(job, run, cached)
            return
        log.info("stage.started", job_id=job.job_id, stage=run.stage)

        metadata = [("x-job-id", job.job_id), ("x-request-id", request.request_id)]
        service = run.service or run.stage

        def progress(event: stage_pb2.Progress) -> None:
            run.step, run.total_steps = event.step, event.total_steps
            self._publish(
                job.job_id,
                stage_progress=orchestrator_pb2.StageProgress(
                    stage=run.stage, step=run.step, total_steps=run.total_steps
                ),
            )

        # Wait here for a slot rather than pile RESOURCE_EXHAUSTED on the stage.
        async with self._scheduler.slot(service, job.request.priority):
            try:
                outcome = await self._caller.call(
                    Route(PRIMARY, self._stages[service], request),
                    self._fallback_route(job, run, request),
                    stage_timeout=self._settings.stage_timeout_seconds,
                    deadline=_deadline(job),
                    metadata=metadata,
                    on_progress=progress,
                )
            except StageCallError as err:
                run.attempts = err.attempts
                raise
        result = outcome.result
        run.route, run.attempts = outcome.route.name, outcome.attempts
        if outcome.route.name == FALLBACK:
            # The output answers the fallback's parameters, not the key's.
            run.request.CopyFrom(outcome.route.request)
            run.cache_key = ""
        if self._cache is not None and run.cache_key:
            if result.model.fingerprint in ("", fingerprint):
                await self._cache.put(run.cache_key, run.stage, result)
            else:  # the stage swapped models since the Describe the key came from
                self._describes.pop(run.service or run.stage, None)
                run.cache_key = ""
        await self._stage_succeeded(job, run, result)

    def _fallback_route(
        self, job: Job, run: StageRun, request: stage_pb2.RunRequest
    ) -> Route | None:
        """The spec's fallback for this stage, reading the same input; None without one."""
        spec = self._specs.get(job.pipeline or DEFAULT_SPEC)
        stage_spec = spec.stage(run.stage) if spec is not None else None
        effective = with_fallback(job.request, spec, run.stage) if spec is not None else None
        if stage_spec is None or stage_spec.fallback_service is None or effective is None:
            return None
        fallback = build_run_request(
            run.stage, effective, job_id=job.job_id, output_prefix=request.output_prefix
        )
        fallback.request_id = f"{request.request_id}.fallback"
        if request.HasField("image"):
            fallback = with_input(fallback, request.image)
        return Route(FALLBACK, self._stages[stage_spec.fallback_service], fallback)

    async def _cache_key(self, run: StageRun) -> tuple[str, str]:
        """The run's cache key ("" with the cache off or the model unknown) and
        the model fingerprint it was computed with."""
        if self._cache is None:
            return "", ""
        # Fresh, not the submit-time cache: a stage may have hot-swapped its
        # model, and a key from the old fingerprint would hit the old output.
        desc = await self._describe(run.service or run.stage, fresh=True)
        if desc is None:
            return "", ""
        return cache_key(run.stage, desc.model, run.request), desc.model.fingerprint

    async def _stage_succeeded(
        self, job: Job, run: StageRun, result: stage_pb2.StageResult
    ) -> None:
        run.output.CopyFrom(result.output)
        run.model.CopyFrom(result.model)
        run.timing.CopyFrom(result.timing)
        if result.HasField("text_check"):
            run.text_check.CopyFrom(result.text_check)
        run.state = orchestrator_pb2.STAGE_STATE_SUCCEEDED
        await self._persist(job)
        self._publish(job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=run))
        log.info(
            "stage.succeeded",
            job_id=job.job_id,
            stage=run.stage,
            output=run.output.key,
            total_ms=run.timing.total_ms,
            cache_hit=run.cache_hit,
        )

    async def _final_url(self, job_id: str, final: common_pb2.ArtifactRef) -> str:
        if self._store is None:
            return ""
        expiry = timedelta(seconds=self._settings.final_url_expiry_seconds)
        try:
            return await asyncio.to_thread(self._store.url, final.key, expiry)
        except Exception:  # the image exists; a missing URL must not fail the job
            log.exception("job.final_url_failed", job_id=job_id, key=final.key)
            return ""

    async def _finish_succeeded(self, job: Job, final: common_pb2.ArtifactRef) -> None:
        job.final.CopyFrom(final)
        job.final_url = await self._final_url(job.job_id, final)
        job.state = orchestrator_pb2.JOB_STATE_SUCCEEDED
        await self._persist(job)
        self._publish(job.job_id, finished=job)
        log.info("job.succeeded", job_id=job.job_id, final=final.key)

    async def _finish_failed(self, job: Job, run: StageRun | None, error: str) -> None:
        failed = [run] if run is not None else self._running_stages(job)
        for stage_run in failed:
            stage_run.state = orchestrator_pb2.STAGE_STATE_FAILED
            stage_run.error = error
        job.state = orchestrator_pb2.JOB_STATE_FAILED
        names = ", ".join(r.stage for r in failed)
        job.error = f"stage {names} failed: {error}" if names else error
        await self._persist(job)
        for stage_run in failed:
            self._publish(job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=stage_run))
        self._publish(job.job_id, finished=job)
        log.warning("job.failed", job_id=job.job_id, error=job.error)

    async def _mark_cancelled(self, job: Job) -> None:
        if job.state in TERMINAL:
            # It finished before the cancellation landed: keep that outcome.
            await self._persist(job)
            self._publish(job.job_id, finished=job)
            return
        cancelled = self._running_stages(job)
        for stage_run in cancelled:
            stage_run.state = orchestrator_pb2.STAGE_STATE_CANCELLED
            stage_run.error = "CANCELLED: the job was cancelled"
        job.state = orchestrator_pb2.JOB_STATE_CANCELLED
        job.error = "cancelled by the caller"
        await self._persist(job)
        for stage_run in cancelled:
            self._publish(job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=stage_run))
        self._publish(job.job_id, finished=job)
        log.info("job.cancelled", job_id=job.job_id)

    @staticmethod
    def _running_stages(job: Job) -> list[StageRun]:
        return [r for r in job.stages if r.state == orchestrator_pb2.STAGE_STATE_RUNNING]

    async def _persist(self, job: Job) -> None:
        _touch(job)
        await self._jobs.update(job)

    def _publish(self, job_id: str, **event: Any) -> None:
        subscribers = self._subscribers.get(job_id)
        if not subscribers:
            return
        message = WatchJobResponse(job_id=job_id, **event)  # copies: later mutation is not seen
        for queue in subscribers:
            queue.put_nowait(message)
