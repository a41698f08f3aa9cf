"""Running one job through its stages, up to its end state.

The executor walks a job's stage runs in order, handing each stage the
previous one's output key: a run already SUCCEEDED (a resumed job, or the
stages a rerun keeps) is skipped, a cache hit is taken instead of a call, and
a call waits for one of its service's slots. It mutates the in-memory `Job`,
persists it at every stage boundary and publishes each step to the hub. The
runner owns the job's task; this module owns what the task does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from stageflow.core import limits
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator.bundle import build_run_request, with_input
from stageflow.orchestrator.cache import StageCache, cache_key
from stageflow.orchestrator.coordination import Coordinator, LocalCoordinator
from stageflow.orchestrator.directory import StageDirectory
from stageflow.orchestrator.events import EventHub
from stageflow.orchestrator.replicas import FALLBACK, PRIMARY, Route, StageCaller
from stageflow.orchestrator.spec import DEFAULT_SPEC, PipelineSpec, with_fallback
from stageflow.orchestrator.stage_client import StageCallError
from stageflow.orchestrator.store import TERMINAL, JobStore
from stageflow.serving import metrics
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2

Job = orchestrator_pb2.Job
StageRun = orchestrator_pb2.StageRun

log = get_logger(__name__)


class RunnerSettings(Protocol):
    """The part of OrchestratorSettings the runner reads."""

    output_prefix: str
    stage_timeout_seconds: float
    max_running_jobs: int
    final_url_expiry_seconds: int
    stage_cache: bool


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _deadline(job: Job) -> float | None:
    """The job's deadline in wall-clock seconds (it outlives a restart), or None."""
    if not job.request.HasField("deadline_seconds"):
        return None
    return job.created_at.ToNanoseconds() / 1e9 + job.request.deadline_seconds


def _running_stages(job: Job) -> list[StageRun]:
    return [r for r in job.stages if r.state == orchestrator_pb2.STAGE_STATE_RUNNING]


class JobExecutor:
    def __init__(
        self,
        directory: StageDirectory,
        hub: EventHub,
        jobs: JobStore,
        settings: RunnerSettings,
        store: ObjectStore | None,
        specs: Mapping[str, PipelineSpec],
        caller: StageCaller,
        coordinator: Coordinator | None = None,
    ) -> None:
        """`coordinator` takes the job's writes and stage slots (default: one
        process owns every job, `LocalCoordinator`)."""
        self._directory = directory
        self._coordinator = coordinator or LocalCoordinator(jobs, directory)
        self._hub = hub
        self._jobs = jobs
        self._settings = settings
        self._store = store
        self._specs = specs
        self._caller = caller
        self._cache = StageCache(jobs, store) if settings.stage_cache else None

    async def execute(self, job: Job) -> None:
        """RUNNING, each stage not yet SUCCEEDED, then SUCCEEDED or FAILED (the
        first stage call that fails fails the job)."""
        job.state = orchestrator_pb2.JOB_STATE_RUNNING
        await self._persist(job)
        upstream: common_pb2.ArtifactRef | None = None
        for run in job.stages:
            if run.state != orchestrator_pb2.STAGE_STATE_SUCCEEDED:
                try:
                    await self._run_stage(job, run, upstream)
                except StageCallError as err:
                    await self.finish_failed(job, run, str(err))
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
        self._hub.publish(job.job_id, stage_started=orchestrator_pb2.StageStarted(stage=run.stage))
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
            self._hub.publish(
                job.job_id,
                stage_progress=orchestrator_pb2.StageProgress(
                    stage=run.stage, step=run.step, total_steps=run.total_steps
                ),
            )

        # Wait here for a slot rather than pile RESOURCE_EXHAUSTED on the stage.
        # The slot is held until the outcome is stored: a draining orchestrator
        # waits for the slots, so no finished call's output is lost.
        async with self._coordinator.slot(service, job.request.priority):
            try:
                outcome = await self._caller.call(
                    Route(PRIMARY, self._directory.client(service), request),
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
                    self._directory.forget(service)
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
        elif request.HasField("latents"):
            fallback = with_input(fallback, request.latents)
        return Route(FALLBACK, self._directory.client(stage_spec.fallback_service), fallback)

    async def _cache_key(self, run: StageRun) -> tuple[str, str]:
        """The run's cache key ("" with the cache off or the model unknown) and
        the model fingerprint it was computed with."""
        if self._cache is None:
            return "", ""
        # Fresh, not the submit-time cache: a stage may have hot-swapped its
        # model, and a key from the old fingerprint would hit the old output.
        desc = await self._directory.describe(run.service or run.stage, fresh=True)
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
        run.warnings[:] = result.warnings
        if run is job.stages[0] and result.width and result.height:
            # The base size the first stage made (its model's default when unset).
            job.width, job.height = result.width, result.height
        run.state = orchestrator_pb2.STAGE_STATE_SUCCEEDED
        await self._persist(job)
        self._hub.publish(job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=run))
        log.info(
            "stage.succeeded",
            job_id=job.job_id,
            stage=run.stage,
            output=run.output.key,
            total_ms=run.timing.total_ms,
            cache_hit=run.cache_hit,
        )

    # --- end states -----------------------------------------------------------

    async def final_url(self, job_id: str, final: common_pb2.ArtifactRef) -> str:
        """A fresh URL of the final image ("" without a store or when the store
        cannot make one: the image exists, a missing URL must not fail the job)."""
        if self._store is None:
            return ""
        expiry = timedelta(seconds=self._settings.final_url_expiry_seconds)
        try:
            return await asyncio.to_thread(self._store.url, final.key, expiry)
        except Exception:
            log.exception("job.final_url_failed", job_id=job_id, key=final.key)
            return ""

    async def _finish_succeeded(self, job: Job, final: common_pb2.ArtifactRef) -> None:
        job.final.CopyFrom(final)
        job.final_url = await self.final_url(job.job_id, final)
        job.state = orchestrator_pb2.JOB_STATE_SUCCEEDED
        await self._persist(job)
        self._hub.publish(job.job_id, finished=job)
        log.info("job.succeeded", job_id=job.job_id, final=final.key)

    async def finish_failed(self, job: Job, run: StageRun | None, error: str) -> None:
        """FAILED, with `run` (or, without one, every RUNNING stage) failed with `error`."""
        failed = [run] if run is not None else _running_stages(job)
        if len(error) > limits.MAX_ERROR_CHARS:  # the job must fit in one message
            error = error[: limits.MAX_ERROR_CHARS] + "... (truncated)"
        for stage_run in failed:
            stage_run.state = orchestrator_pb2.STAGE_STATE_FAILED
            stage_run.error = error
        job.state = orchestrator_pb2.JOB_STATE_FAILED
        names = ", ".join(r.stage for r in failed)
        job.error = f"stage {names} failed: {error}" if names else error
        await self._persist(job)
        for stage_run in failed:
            self._hub.publish(
                job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=stage_run)
            )
        self._hub.publish(job.job_id, finished=job)
        log.warning("job.failed", job_id=job.job_id, error=job.error)

    async def mark_cancelled(self, job: Job) -> None:
        """CANCELLED, with its RUNNING stages; a job that finished before the
        cancellation landed keeps that outcome."""
        if job.state in TERMINAL:
            await self._persist(job)
            self._hub.publish(job.job_id, finished=job)
            return
        cancelled = _running_stages(job)
        for stage_run in cancelled:
            stage_run.state = orchestrator_pb2.STAGE_STATE_CANCELLED
            stage_run.error = "CANCELLED: the job was cancelled"
        job.state = orchestrator_pb2.JOB_STATE_CANCELLED
        job.error = "cancelled by the caller"
        await self._persist(job)
        for stage_run in cancelled:
            self._hub.publish(
                job.job_id, stage_finished=orchestrator_pb2.StageFinished(run=stage_run)
            )
        self._hub.publish(job.job_id, finished=job)
        log.info("job.cancelled", job_id=job.job_id)

    async def _persist(self, job: Job) -> None:
        job.updated_at.CopyFrom(now())
        await self._coordinator.persist(job)
