"""The job lifecycle: submit, rerun, cancel, read, watch, resume.

One asyncio task per job, at most `max_running_jobs` past the semaphore at once.
The task owns its job's state; what it does (stage by stage, up to the end
state) is `execution.JobExecutor`'s. The runner's other parts: the stage
directory (clients, Describe cache, per-stage limits), the event hub (WatchJob
streams) and a `store.JobStore` (any implementation: the runner depends on the
protocol only). Stages only ever exchange artifact keys.

Tenants are enforced here, the one layer every path to a job goes through
(gRPC today, the gateway through gRPC): each API method takes the caller's
`tenant` (None: authentication is off, nothing is scoped). A job belongs to
the tenant that submitted it; another tenant's job id is NOT_FOUND with the
message an unknown id gets, so its existence is not revealed.

Replicas: with `leases` (a PostgreSQL job store shared by several
orchestrators) a job is run not by the replica that stored it but by the one
whose claim loop (`claims.ClaimLoop`) takes it: QUEUED jobs, and RUNNING ones
whose lease ran out, up to `max_running_jobs` across the cluster. The job's
task is the same; its writes are fenced and its stage slots cluster-wide
(`coordination.LeasedCoordinator`), its watch events and cancel requests
travel by NOTIFY. Without `leases` (SQLite, `stageflow up`) this process owns
every job it stores, as it always did.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context

from stageflow.core import limits
from stageflow.core.artifacts import get_artifact
from stageflow.core.errors import FailedPrecondition, InvalidArgument, NotFound
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator import listing
from stageflow.orchestrator.artifacts import check_artifact_request, select_artifact
from stageflow.orchestrator.bundle import (
    DEFAULT_PIPELINE,
    build_run_request,
    compose_prompt,
    pipeline_of,
)
from stageflow.orchestrator.coordination import (
    Coordinator,
    LeasedCoordinator,
    LeaseLost,
    LocalCoordinator,
)
from stageflow.orchestrator.directory import StageDirectory
from stageflow.orchestrator.events import EventHub
from stageflow.orchestrator.execution import JobExecutor, RunnerSettings, now
from stageflow.orchestrator.quotas import Quota
from stageflow.orchestrator.replicas import StageCaller
from stageflow.orchestrator.rerun import apply_overrides
from stageflow.orchestrator.scheduler import PriorityGate
from stageflow.orchestrator.sharing import ShareSigner
from stageflow.orchestrator.spec import (
    DEFAULT_SPEC,
    PipelineSpec,
    builtin_spec,
    fallback_services,
    services_of,
    with_defaults,
)
from stageflow.orchestrator.stage_client import StageClient
from stageflow.orchestrator.store import TERMINAL, UNFINISHED, Cursor, JobStore, new_job_id
from stageflow.orchestrator.uploads import UploadLimits, resolve_upload, store_upload
from stageflow.orchestrator.validation import check_request
from stageflow.serving import tracing
from stageflow.v1 import common_pb2, orchestrator_pb2

if TYPE_CHECKING:  # psycopg is only needed with PostgreSQL
    from stageflow.orchestrator.claims import ClaimLoop
    from stageflow.orchestrator.leases import Claim, JobLeases

Job = orchestrator_pb2.Job
StageRun = orchestrator_pb2.StageRun
WatchJobResponse = orchestrator_pb2.WatchJobResponse

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A ListJobs page stops before its jobs pass this many bytes, so the answer
# fits in one message under any client's default 4 MiB receive limit.
MAX_PAGE_BYTES = 3 * 1024 * 1024

log = get_logger(__name__)

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "JobRunner", "RunnerSettings"]


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
        upload_limits: UploadLimits | None = None,
        sharing: ShareSigner | None = None,
        default_quota: Quota | None = None,
        leases: JobLeases | None = None,
    ) -> None:
        """`specs` by name (pipelines/*.yaml); without them a built-in "default"
        spec runs `pipeline` with the built-in defaults. `stage_limits` caps the
        calls in flight per stage service (else its Describe's capacity).
        `caller` retries, backs off and falls back (default: StageCaller()).
        `leases`: one of several replicas over a shared PostgreSQL store (see
        the module docstring); None: this process runs every job it stores."""
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
        self._jobs = jobs
        self._settings = settings
        self._store = store  # read by GetArtifact, written by UploadImage
        self._upload_limits = upload_limits or UploadLimits()
        self._sharing = sharing or ShareSigner("", 0)
        self._default_quota = default_quota or Quota()
        # Per tenant: submits are checked against the quota one at a time, and
        # its jobs past its running limit wait QUEUED for one of its slots.
        self._tenant_slots: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._directory = StageDirectory(stages, stage_limits)
        self._leases = leases
        self._coordinator: Coordinator
        if leases is None:
            self._coordinator = LocalCoordinator(jobs, self._directory)
            self._hub = EventHub()
        else:
            self._coordinator = LeasedCoordinator(leases, self._directory)
            # A watched job's end is also read from the store now and then.
            self._hub = EventHub(relay=self._relay, recheck_seconds=leases.lease_seconds)
        # Replicas: the claim loop, events to NOTIFY, the jobs whose lease
        # another replica took, background tasks.
        self._claims: ClaimLoop | None = None
        self._outbox: asyncio.Queue[WatchJobResponse] = asyncio.Queue()
        self._lost: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        self._executor = JobExecutor(
            self._directory,
            self._hub,
            jobs,
            settings,
            store,
            self._specs,
            caller or StageCaller(),
            self._coordinator,
        )
        self._rerun_lock = asyncio.Lock()
        # Jobs past this gate run; interactive ones are let in before bulk ones.
        self._slots = PriorityGate(settings.max_running_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, Job] = {}  # jobs with a task; fresher than the DB (step counts)
        self._cancelling: set[str] = set()
        self._closing = False

    # --- process lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Resume jobs left QUEUED or RUNNING by a previous process, from their
        first stage that has not succeeded (finished stages are not recomputed).
        A replica instead makes sure each unfinished job is claimable and
        starts its claim loop: whichever replica claims a job resumes it."""
        if self._leases is not None:
            await self._start_replica(self._leases)
            return
        for job in await self._jobs.unfinished():
            if job.job_id in self._tasks:
                continue
            _resumable(job)
            log.info("job.resume", job_id=job.job_id)
            self._start_task(job)

    async def drain(self, seconds: float) -> None:
        """The first step of a shutdown: start no job and no stage call from now
        on (a job submitted meanwhile is stored QUEUED), give the stage calls in
        flight up to `seconds` to finish (their outputs are kept), then end every
        WatchJob stream so that its client moves to the next process."""
        self._closing = True
        self._slots.close()
        if self._claims is not None:
            self._claims.stop_claiming()
        log.info("runner.draining", running_jobs=len(self._tasks), grace_seconds=seconds)
        try:
            async with asyncio.timeout(seconds):
                await self._directory.close()
        except TimeoutError:
            log.warning("runner.drain_timeout", grace_seconds=seconds)
        self._hub.close()

    async def close(self) -> None:
        """Stop running jobs without marking them: the next start() resumes them
        (QUEUED and RUNNING jobs stay so in the store). A replica gives their
        leases back, so another replica takes them over at once."""
        self._closing = True
        self._slots.close()
        if self._claims is not None:
            self._claims.stop_claiming()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._claims is not None:
            await self._claims.drain()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- API ------------------------------------------------------------------

    async def submit(
        self, request: orchestrator_pb2.SubmitJobRequest, tenant: str | None = None
    ) -> Job:
        """Validate, persist QUEUED and start the job, owned by `tenant`; a
        repeated request_id (of that tenant) returns the first job. Raises
        InvalidArgument naming the offending field."""
        check_request(request)
        spec = self._spec(request.pipeline)
        input_ref = None
        if request.input_image:
            input_ref, request = await self._with_input(request, spec, tenant)
        pipeline = pipeline_of(request, spec.order_for(request.bundle))
        services = services_of(spec, pipeline)
        missing = [name for name in pipeline if services[name] not in self._directory]
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
        if input_ref is not None:  # the first stage reads the uploaded image
            runs[pipeline[0]].image.CopyFrom(input_ref)
        size = await self._directory.check(effective, spec, pipeline, runs)
        # An uploaded input's size is the image's (set by _with_input).
        width, height = (
            (request.width, request.height)
            if input_ref is not None
            else size or (request.width, request.height)
        )
        if request.validate_only:
            # Checked as a real submit is; nothing is stored, nothing runs.
            return Job(
                bundle=request.bundle,
                prompt=compose_prompt(request.bundle),
                seed=request.seed,
                width=width,
                height=height,
                stages=[StageRun(stage=name, service=services[name]) for name in pipeline],
                pipeline=spec.name,
                pipeline_sha256=spec.sha256,
            )
        created_at = now()
        job = Job(
            job_id=job_id,
            state=orchestrator_pb2.JOB_STATE_QUEUED,
            bundle=request.bundle,
            prompt=compose_prompt(request.bundle),
            seed=request.seed,
            width=width,
            height=height,
            stages=[
                StageRun(
                    stage=name,
                    service=services[name],
                    state=orchestrator_pb2.STAGE_STATE_PENDING,
                    request=runs[name],
                )
                for name in pipeline
            ],
            created_at=created_at,
            updated_at=created_at,
            request=request,
            pipeline=spec.name,
            pipeline_sha256=spec.sha256,
            version=1,
            tenant=tenant or "",
        )
        # The tenant's queued and per-minute limits are checked by the store,
        # in the insert's transaction: they hold across orchestrator replicas.
        quota = None if tenant is None else await self.quota(tenant)
        stored, created = await self._jobs.create(job, request.request_id, quota)
        if not created:
            tracing.tag_job(stored.job_id)
            live = self._live.get(stored.job_id)
            return _copy(live) if live is not None else stored
        log.info("job.submitted", job_id=job_id, idempotency_key=request.request_id)
        await self._dispatch(job)
        return _copy(job)

    async def rerun(
        self, request: orchestrator_pb2.RerunJobRequest, tenant: str | None = None
    ) -> Job:
        """Version N+1 of a finished job: stages before `from_stage` keep their
        outputs, the rest run again with the overrides merged in."""
        await self.get(request.job_id, tenant)  # before anything tells a running job apart
        async with self._rerun_lock:  # two reruns of one job must not both be N+1
            task = self._tasks.get(request.job_id)
            if task is None and self._leases is not None:
                stored = await self.get(request.job_id, tenant)
                if stored.state not in TERMINAL:  # another replica runs it
                    raise FailedPrecondition(
                        f"job {request.job_id} is still running; wait for it or cancel it"
                    )
            if task is not None:
                live = self._live.get(request.job_id)
                if live is not None and live.state not in TERMINAL:
                    raise FailedPrecondition(
                        f"job {request.job_id} is still running; wait for it or cancel it"
                    )
                # Finished (watchers may have seen it) but its task is still closing.
                await asyncio.wait({task})
            previous = await self.get(request.job_id, tenant)
            if (previous.version or 1) >= limits.MAX_VERSIONS:
                # GetJob answers every version in one message: they are bounded.
                raise FailedPrecondition(
                    f"job {previous.job_id} has {limits.MAX_VERSIONS} versions, the most a "
                    "job keeps; submit a new job instead"
                )
            spec = self._spec(previous.pipeline)
            job = apply_overrides(previous, request)
            effective = with_defaults(job.request, spec)
            names = [run.stage for run in job.stages]
            first = names.index(request.from_stage)
            uploaded = common_pb2.ArtifactRef()
            if job.request.input_image:  # rerun from the first stage: it reads the upload
                uploaded.CopyFrom(previous.stages[0].request.image)
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
            if first == 0 and uploaded.key:
                job.stages[0].request.image.CopyFrom(uploaded)
            runs = {run.stage: run.request for run in job.stages[first:]}
            # Stages before `from_stage` keep their outputs: the base size is theirs.
            kept = (job.width, job.height) if first > 0 and job.width and job.height else None
            await self._directory.check(effective, spec, tuple(names), runs, size=kept)
            created_at = now()
            job.created_at.CopyFrom(created_at)
            job.updated_at.CopyFrom(created_at)
            job.pipeline_sha256 = spec.sha256
            previous.version = previous.version or 1
            await self._jobs.add_version(previous, job)
            log.info(
                "job.rerun", job_id=job.job_id, version=job.version, from_stage=request.from_stage
            )
            await self._dispatch(job)
            return _copy(job)

    async def versions(self, job_id: str, tenant: str | None = None) -> list[Job]:
        """Every version of the job, oldest first; the last is `get(job_id)`."""
        latest = await self.get(job_id, tenant)
        return [*await self._jobs.versions(job_id), latest]

    async def artifact(
        self, request: orchestrator_pb2.GetArtifactRequest, tenant: str | None = None
    ) -> tuple[common_pb2.ArtifactRef, bytes]:
        """The artifact of a job version the request names, read from the store
        and checked against its sha256 (DATA_LOSS otherwise)."""
        check_artifact_request(request)
        ref = select_artifact(request, await self.versions(request.job_id, tenant))
        if self._store is None:
            raise FailedPrecondition("this orchestrator has no object store to read from")
        data = await asyncio.to_thread(get_artifact, self._store, ref.key, ref.sha256)
        return ref, data

    async def share(
        self, request: orchestrator_pb2.ShareArtifactRequest, tenant: str | None = None
    ) -> orchestrator_pb2.ShareArtifactResponse:
        """A signed token for the final image of a version of `tenant`'s job."""
        check_artifact_request(
            orchestrator_pb2.GetArtifactRequest(job_id=request.job_id, version=request.version)
        )
        versions = await self.versions(request.job_id, tenant)
        select = orchestrator_pb2.GetArtifactRequest(job_id=request.job_id, version=request.version)
        select_artifact(select, versions)  # NOT_FOUND / FAILED_PRECONDITION: nothing to share
        version = request.version or versions[-1].version or 1
        shared = self._sharing.sign(request.job_id, version, int(request.expires_in_seconds))
        reply = orchestrator_pb2.ShareArtifactResponse(
            token=self._sharing.token(shared), version=version
        )
        reply.expires_at.FromSeconds(shared.expires)
        return reply

    async def shared_artifact(
        self, token: str
    ) -> tuple[common_pb2.ArtifactRef, bytes, orchestrator_pb2.Job]:
        """The final image a valid, unexpired share token names (of any tenant:
        the token is the authority), and that job version without its tenant,
        store URL and request (see GetSharedArtifactResponse.job)."""
        shared = self._sharing.verify(token)
        request = orchestrator_pb2.GetArtifactRequest(job_id=shared.job_id, version=shared.version)
        ref, data = await self.artifact(request, None)
        versions = await self.versions(shared.job_id, None)
        job = orchestrator_pb2.Job()
        job.CopyFrom(next(v for v in versions if (v.version or 1) == shared.version))
        for private in ("tenant", "final_url", "request"):
            job.ClearField(private)
        return ref, data, job

    async def quota(self, tenant: str) -> Quota:
        """`tenant`'s quota: its own row, else the default."""
        return await self._jobs.get_quota(tenant) or self._default_quota

    @contextlib.asynccontextmanager
    async def _tenant_slot(self, tenant: str) -> AsyncIterator[None]:
        """One of the tenant's running slots (its quota's max_running)."""
        if not tenant:
            yield
            return
        limit = (await self.quota(tenant)).max_running
        if limit is None:
            yield
            return
        entry = self._tenant_slots.get(tenant)
        if entry is None or entry[0] != limit:  # its first job, or its quota changed
            entry = (limit, asyncio.Semaphore(limit))
            self._tenant_slots[tenant] = entry
        async with entry[1]:
            yield

    @property
    def upload_max_bytes(self) -> int:
        return self._upload_limits.max_bytes

    async def upload(
        self, data: bytes, tenant: str | None = None
    ) -> orchestrator_pb2.UploadImageResponse:
        """Check an uploaded image from its header, then store it under `tenant`."""
        if self._store is None:
            raise FailedPrecondition("this orchestrator has no object store to write to")
        return await store_upload(self._store, data, tenant, self._upload_limits)

    async def _with_input(
        self,
        request: orchestrator_pb2.SubmitJobRequest,
        spec: PipelineSpec,
        tenant: str | None,
    ) -> tuple[common_pb2.ArtifactRef, orchestrator_pb2.SubmitJobRequest]:
        """The upload `request.input_image` names (of `tenant`) and the request
        with its size and a stage order that starts after base."""
        if self._store is None:
            raise FailedPrecondition("this orchestrator has no object store to read from")
        ref, width, height = await resolve_upload(self._store, request.input_image, tenant)
        out = orchestrator_pb2.SubmitJobRequest()
        out.CopyFrom(request)
        for name, actual in (("width", width), ("height", height)):
            given = getattr(out, name)
            if given and given != actual:
                raise InvalidArgument(name, f"must be 0 or the input image's {actual}, got {given}")
            setattr(out, name, actual)
        if not out.stages:
            out.stages.extend(name for name in spec.order_for(out.bundle) if name != "base")
            if not out.stages:
                raise InvalidArgument(
                    "input_image", f"pipeline {spec.name!r} has no stage after base to read it"
                )
        if "refine" in out.stages and not out.bundle.base.strip():
            raise InvalidArgument("bundle.base", "must not be empty: the refine stage needs it")
        return ref, out

    def pipelines(self) -> list[orchestrator_pb2.PipelineInfo]:
        """The pipeline specs this runner runs, by name."""
        return [
            orchestrator_pb2.PipelineInfo(name=name, stages=spec.order, sha256=spec.sha256)
            for name, spec in sorted(self._specs.items())
        ]

    def _spec(self, name: str) -> PipelineSpec:
        spec = self._specs.get(name or DEFAULT_SPEC)
        if spec is None:
            known = ", ".join(sorted(self._specs))
            raise InvalidArgument(
                "pipeline", f"unknown pipeline spec {limits.quote(name)}; known: {known}"
            )
        return spec

    async def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job's latest version; NotFound when it is unknown or not `tenant`'s."""
        if not job_id:
            raise InvalidArgument("job_id", "must not be empty")
        problem = limits.length_problem(job_id, limits.MAX_ID_CHARS)
        if problem:
            raise InvalidArgument("job_id", problem)
        live = self._live.get(job_id)
        job = _copy(live) if live is not None else await self._jobs.get(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"job {limits.quote(job_id)} not found")
        if job.state == orchestrator_pb2.JOB_STATE_QUEUED:
            job.queue_position = await self._queue_position(job_id)
        if live is not None:
            return job
        if job.state == orchestrator_pb2.JOB_STATE_SUCCEEDED:
            # A presigned URL expires; every GetJob hands out a fresh one.
            job.final_url = await self._executor.final_url(job.job_id, job.final) or job.final_url
        return job

    async def _queue_position(self, job_id: str) -> int:
        """A QUEUED job's place among the jobs waiting to start (1 = next; 0:
        not waiting in that queue, e.g. for its tenant's running slot): in this
        process's gate, or (replicas) in the cluster's claim order."""
        if self._leases is not None:
            return await self._leases.queue_position(job_id)
        return self._slots.position(job_id)

    async def list_jobs(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        state: orchestrator_pb2.JobState = orchestrator_pb2.JOB_STATE_UNSPECIFIED,
        tenant: str | None = None,
    ) -> list[Job]:
        """Newest first; only jobs in `state` unless it is UNSPECIFIED, only `tenant`'s."""
        jobs, _ = await self.list_page(page_size, state, tenant)
        return jobs

    async def list_page(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        state: orchestrator_pb2.JobState = orchestrator_pb2.JOB_STATE_UNSPECIFIED,
        tenant: str | None = None,
        page_token: str = "",
        query: str = "",
    ) -> tuple[list[Job], str]:
        """One page as `list_jobs`, after `page_token`, of jobs whose prompt has
        `query` (`listing`); and the token of the next page ("" on the last)."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be in [1, {MAX_PAGE_SIZE}], got {page_size}")
        if state not in orchestrator_pb2.JobState.values():
            raise InvalidArgument("state", f"unknown JobState value {state}")
        problem = limits.length_problem(query, limits.MAX_QUERY_CHARS)
        if problem:
            raise InvalidArgument("query", problem)
        wanted = None if state == orchestrator_pb2.JOB_STATE_UNSPECIFIED else state
        consumed = listing.decode_token(page_token)
        folded = listing.needle(query)
        batch = max(page_size + 1, listing.SCAN_BATCH) if folded else page_size + 1
        page: list[Job] = []
        size = scanned = 0
        async with contextlib.aclosing(self._listed(batch, wanted, tenant, consumed)) as rows:
            async for cursor, stored in rows:
                if scanned == listing.MAX_SCANNED:
                    break  # looked at enough: the caller follows the token
                scanned += 1
                if folded and not listing.matches(stored, folded):
                    consumed = cursor
                    continue
                job = _copy(self._live[stored.job_id]) if stored.job_id in self._live else stored
                size += job.ByteSize()
                if len(page) == page_size or (page and size > MAX_PAGE_BYTES):
                    break  # the rest on the next page
                page.append(job)
                consumed = cursor
            else:
                return page, ""
        assert consumed is not None  # at least one job was looked at
        return page, listing.encode_token(consumed)

    async def _listed(
        self,
        batch: int,
        state: orchestrator_pb2.JobState | None,
        tenant: str | None,
        after: Cursor | None,
    ) -> AsyncGenerator[tuple[Cursor, Job], None]:
        """The store's jobs newest first from `after` on, read `batch` at a time."""
        while True:
            rows = await self._jobs.list_page(batch, state, tenant, after)
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            after = rows[-1][0]

    async def cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """Cancel the job and its running stage call; a finished job is returned unchanged."""
        job = await self.get(job_id, tenant)
        task = self._tasks.get(job_id)
        if task is None and self._leases is not None:
            return await self._cancel_elsewhere(job)
        if task is None:
            if job.state in UNFINISHED:  # stored unfinished but not resumed yet
                await self._executor.mark_cancelled(job)
            return job
        if job_id not in self._cancelling:
            self._cancelling.add(job_id)
            task.cancel()
        # Shielded from our own caller's cancellation: the task finishes regardless.
        await asyncio.wait({task})
        return await self.get(job_id)

    def watch(self, job_id: str, tenant: str | None = None) -> AsyncIterator[WatchJobResponse]:
        """The snapshot, then every event, ending with `finished`."""
        return self._hub.watch(job_id, functools.partial(self.get, tenant=tenant))

    # --- the job's task ---------------------------------------------------------

    async def _dispatch(self, job: Job) -> None:
        """Run a job just stored QUEUED: here, or (replicas) wherever it is claimed."""
        if self._leases is None:
            self._start_task(job)
            return
        await self._leases.enqueue(job, await self._tenant_limit(job))

    def _start_task(self, job: Job, fence: int | None = None) -> None:
        job_id = job.job_id
        self._live[job_id] = job
        # The job's span continues the submitting call's trace (none on resume).
        parent = otel_context.get_current()
        # A fresh context: the task must not inherit the submitting call's log
        # context (its request id and method) for the rest of the job's life.
        task = asyncio.create_task(
            self._run_job(job, parent, fence), name=f"job {job_id}", context=contextvars.Context()
        )
        self._tasks[job_id] = task
        task.add_done_callback(lambda done: self._forget_task(job_id, done))

    def _forget_task(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:  # not a later run of the same job
            del self._tasks[job_id]

    async def _run_job(
        self, job: Job, parent: otel_context.Context | None = None, fence: int | None = None
    ) -> None:
        job_id = job.job_id
        span = tracing.tracer.start_as_current_span(
            "job.run", context=parent, attributes={tracing.JOB_ID: job_id}
        )
        try:
            async with self._admitted(job, fence):
                with span:
                    await self._executor.execute(job)
        except LeaseLost:  # a write was refused: another replica owns the job now
            log.warning("job.stopped_lease_lost", job_id=job_id, fence=fence)
        except asyncio.CancelledError:
            if job_id in self._lost:  # the lease passed on: write nothing
                log.warning("job.stopped_lease_lost", job_id=job_id, fence=fence)
                _uncancel()
                return
            if job_id not in self._cancelling:
                raise  # shutdown: the stored state stays unfinished and is resumed
            _uncancel()
            with contextlib.suppress(LeaseLost):
                await self._executor.mark_cancelled(job)
        except Exception as err:  # a bug or a broken store: fail the job, keep serving
            log.exception("job.internal_error", job_id=job_id)
            if self._closing:
                return  # left unfinished in the store: the next start retries it
            # Not str(err): it may hold reprs, paths or data; the log has the traceback.
            with contextlib.suppress(LeaseLost):
                await self._executor.finish_failed(
                    job, None, f"internal error ({type(err).__name__}; see the orchestrator's log)"
                )
        finally:
            self._live.pop(job_id, None)
            self._cancelling.discard(job_id)
            self._lost.discard(job_id)
            if isinstance(self._coordinator, LeasedCoordinator):
                self._coordinator.disown(job_id, fence)
            # Closing: the lease stays held until close() gives it back.
            if self._claims is not None and not self._closing:
                self._claims.finished(job_id, fence)

    @contextlib.asynccontextmanager
    async def _admitted(self, job: Job, fence: int | None) -> AsyncIterator[None]:
        """Held while the job runs: its tenant's running slot and one of
        `max_running_jobs` (interactive first). A replica's claim already
        counted both, cluster-wide."""
        if fence is not None:
            yield
            return
        async with (
            self._tenant_slot(job.tenant),
            self._slots.hold(job.request.priority, job.job_id),
        ):
            yield

    # --- replicas ---------------------------------------------------------------

    async def _start_replica(self, leases: JobLeases) -> None:
        from stageflow.orchestrator.claims import ClaimLoop

        await self._adopt(leases)
        self._claims = ClaimLoop(
            leases,
            leases.conninfo(),
            max_running=self._settings.max_running_jobs,
            start=self._take,
            on_lost=self._lose,
            on_cancel=self._cancel_here,
            on_event=self._received,
        )
        self._claims.start()
        self._background.append(asyncio.create_task(self._send_events(), name="replica events"))

    async def _tenant_limit(self, job: Job) -> int | None:
        return (await self.quota(job.tenant)).max_running if job.tenant else None

    async def _adopt(self, leases: JobLeases) -> None:
        """Unfinished jobs without a live lease row become claimable (their
        replica stored them and died before enqueueing)."""
        jobs = await self._jobs.unfinished()
        limit_of = {job.job_id: await self._tenant_limit(job) for job in jobs}
        added = await leases.adopt(jobs, lambda job: limit_of[job.job_id])
        if added:
            log.info("jobs.adopted", count=added)

    async def _take(self, claim: Claim) -> None:
        """Run the job just claimed, from its first stage not yet succeeded."""
        assert isinstance(self._coordinator, LeasedCoordinator) and self._claims is not None
        await self._stop_superseded(claim.job_id)
        job = await self._jobs.get(claim.job_id)
        if job is None:
            self._claims.finished(claim.job_id)
            return
        self._coordinator.own(job.job_id, claim.fence)
        if job.state in TERMINAL or claim.cancel_requested:
            # Finished (its lease row outlived it) or cancelled while queued.
            try:
                if job.state in TERMINAL:
                    await self._coordinator.persist(job)  # ends the lease
                else:
                    await self._executor.mark_cancelled(job)
            except LeaseLost:
                pass
            finally:
                self._coordinator.disown(job.job_id)
                self._claims.finished(job.job_id)
            return
        _resumable(job)
        log.info("job.resume", job_id=job.job_id, fence=claim.fence)
        self._start_task(job, claim.fence)

    async def _stop_superseded(self, job_id: str) -> None:
        """This replica claimed a job it still runs: its own lease ran out (the
        database was away past it) and the fence moved on. The older run is
        stale: stop it without a write before the new claim runs the job."""
        old = self._tasks.get(job_id)
        if old is None:
            return
        log.warning("job.claimed_again", job_id=job_id)
        self._lost.add(job_id)
        old.cancel()
        await asyncio.wait({old})

    def _lose(self, job_id: str) -> None:
        """A renewal found the job's fence stale: stop it without a write."""
        task = self._tasks.get(job_id)
        if task is not None:
            self._lost.add(job_id)
            task.cancel()

    def _cancel_here(self, job_id: str) -> None:
        """A cancel asked on some replica: ours to do if the job runs here."""
        task = self._tasks.get(job_id)
        if task is not None and job_id not in self._cancelling:
            self._cancelling.add(job_id)
            task.cancel()

    async def _cancel_elsewhere(self, job: Job) -> Job:
        """Cancel a job another replica runs (or none yet): mark it in the
        database, which tells its owner (or lets a claim end it), and wait for
        its end state."""
        assert self._leases is not None
        if job.state in TERMINAL:
            return job
        await self._leases.request_cancel(job.job_id)
        while True:
            stored = await self._jobs.get(job.job_id)
            if stored is None or stored.state in TERMINAL:
                return stored or job
            await asyncio.sleep(0.05)

    def _relay(self, message: WatchJobResponse) -> None:
        self._outbox.put_nowait(message)

    async def _send_events(self) -> None:
        """NOTIFY each event of this replica's jobs as "OWNER JOB_ID DATA",
        DATA the event's bytes in base64; empty when that would pass the
        payload limit (a watcher elsewhere then reads a `finished` job from
        the store; a larger other event is left out, the job's end has it)."""
        from stageflow.orchestrator.leases import MAX_PAYLOAD

        assert self._leases is not None
        while True:
            message = await self._outbox.get()
            data = base64.b64encode(message.SerializeToString()).decode()
            head = f"{self._leases.owner} {message.job_id} "
            if len(head) + len(data) > MAX_PAYLOAD:
                if message.WhichOneof("event") != "finished":
                    continue
                data = ""
            try:
                await self._leases.announce(head + data)
            except Exception:  # the database is away: watchers see the stored job
                log.warning("job.event_notify_failed", job_id=message.job_id)

    def _received(self, payload: str) -> None:
        """An event another replica published, for this replica's watchers."""
        assert self._leases is not None
        owner, _, rest = payload.partition(" ")
        job_id, _, data = rest.partition(" ")
        if owner == self._leases.owner or not self._hub.watched(job_id):
            return
        if data:
            self._hub.deliver(WatchJobResponse.FromString(base64.b64decode(data)))
            return
        self._background.append(asyncio.create_task(self._deliver_finished(job_id)))

    async def _deliver_finished(self, job_id: str) -> None:
        job = await self._jobs.get(job_id)
        if job is not None:
            self._hub.deliver(WatchJobResponse(job_id=job_id, finished=job))


def _resumable(job: Job) -> None:
    """QUEUED again, its stages that did not succeed back to PENDING."""
    for run in job.stages:
        if run.state != orchestrator_pb2.STAGE_STATE_SUCCEEDED:
            run.state = orchestrator_pb2.STAGE_STATE_PENDING
            run.step = run.total_steps = 0
            run.error = ""
    job.state = orchestrator_pb2.JOB_STATE_QUEUED


def _uncancel() -> None:
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()
