"""A fake StageClient, ObjectStore and JobStore for runner tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from stageflow.core.errors import NotFound
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator.auth import ApiKey
from stageflow.orchestrator.quotas import WINDOW_SECONDS, Quota, TenantUsage, check_submit
from stageflow.orchestrator.stage_client import StageCallError
from stageflow.orchestrator.store import UNFINISHED, Cursor
from stageflow.orchestrator.store_sql import version_taken
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2


class FakeStage:
    """Records calls; emits `steps` progress events then a result keyed by call.

    `block_at`: after that many progress events, wait for `release` (forever
    unless set). `fail`: (code, message) raised after the progress events.
    """

    def __init__(
        self,
        name: str,
        *,
        steps: int = 3,
        fail: tuple[str, str] | None = None,
        block_at: int | None = None,
        describe: stage_pb2.DescribeResponse | None = None,
    ) -> None:
        self.name = name
        self.steps = steps
        self.fail = fail
        self.block_at = block_at
        self.describe_response = describe
        self.calls: list[stage_pb2.RunRequest] = []
        self.metadata: list[Sequence[tuple[str, str]]] = []
        self.timeouts: list[float | None] = []
        self.entered = asyncio.Event()  # set when a call reaches block_at
        self.release = asyncio.Event()
        self.cancelled = False
        self.describe_calls = 0

    def output_key(self, call: int) -> str:
        return f"artifacts/{self.name}-{call}.png"

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        self.calls.append(request)
        self.metadata.append(metadata)
        self.timeouts.append(timeout)
        call = len(self.calls)
        try:
            for step in range(1, self.steps + 1):
                if step - 1 == self.block_at:
                    self.entered.set()
                    await self.release.wait()
                yield stage_pb2.RunResponse(
                    progress=stage_pb2.Progress(step=step, total_steps=self.steps)
                )
            if self.fail is not None:
                raise StageCallError(*self.fail)
            key = self.output_key(call)
            yield stage_pb2.RunResponse(
                result=stage_pb2.StageResult(
                    output=common_pb2.ArtifactRef(
                        key=key, sha256=f"sha-{self.name}-{call}", size_bytes=10
                    ),
                    model=common_pb2.ModelInfo(name=f"tiny-{self.name}", backend="torch"),
                    timing=common_pb2.Timing(compute_ms=5.0, total_ms=6.0),
                )
            )
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def describe(self) -> stage_pb2.DescribeResponse:
        self.describe_calls += 1
        if self.describe_response is None:
            raise StageCallError("UNAVAILABLE", "connection refused")
        return self.describe_response

    async def close(self) -> None:
        pass


@dataclass
class FakeSettings:
    output_prefix: str = "artifacts"
    stage_timeout_seconds: float = 30.0
    max_running_jobs: int = 4
    final_url_expiry_seconds: int = 120
    # Off unless a test is about the cache: the others count every stage call.
    stage_cache: bool = False


class FakeStore(ObjectStore):
    """`url` for the runner; `get` reads `objects` (the stage cache verifies hits)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(f"{key} not found") from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return f"https://store.example/{key}?expires={int(expires.total_seconds())}"

    def describe(self) -> str:
        return "fake"

    def list_keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError


class MemoryJobStore:
    """`store.JobStore` in dicts: the contract and nothing else, so the runner's
    tests run against it and the SQLite store alike (a runner that needed more
    than the protocol would fail here). Copies on the way in and out, as a
    serializing store does."""

    def __init__(self) -> None:
        self.jobs: dict[str, orchestrator_pb2.Job] = {}  # insertion order = rowid order
        self.by_request: dict[tuple[str, str], str] = {}  # (tenant, request_id) -> job id
        self.keys: dict[str, ApiKey] = {}
        self.quotas: dict[str, Quota] = {}
        self.old: dict[tuple[str, int], orchestrator_pb2.Job] = {}
        self.cache: dict[str, stage_pb2.StageResult] = {}

    @staticmethod
    def _copy(job: orchestrator_pb2.Job) -> orchestrator_pb2.Job:
        out = orchestrator_pb2.Job()
        out.CopyFrom(job)
        return out

    def _newest_first(self) -> list[tuple[Cursor, orchestrator_pb2.Job]]:
        rows = [((j.created_at.ToMicroseconds(), i), j) for i, j in enumerate(self.jobs.values())]
        rows.sort(key=lambda r: r[0], reverse=True)
        return rows

    async def create(
        self, job: orchestrator_pb2.Job, request_id: str = "", quota: Quota | None = None
    ) -> tuple[orchestrator_pb2.Job, bool]:
        # No await below: atomic on the one event loop.
        if request_id and (job.tenant, request_id) in self.by_request:
            return self._copy(self.jobs[self.by_request[job.tenant, request_id]]), False
        if quota is not None:
            now = job.created_at.ToMicroseconds() / 1e6
            check_submit(quota, self._usage(job.tenant, now - WINDOW_SECONDS), now)
        if job.job_id in self.jobs:
            raise KeyError(f"job {job.job_id!r} exists")
        self.jobs[job.job_id] = self._copy(job)
        if request_id:
            self.by_request[job.tenant, request_id] = job.job_id
        return job, True

    async def get(self, job_id: str) -> orchestrator_pb2.Job | None:
        job = self.jobs.get(job_id)
        return None if job is None else self._copy(job)

    async def update(self, job: orchestrator_pb2.Job) -> None:
        if job.job_id not in self.jobs:
            raise KeyError(f"no job {job.job_id!r} to update")
        self.jobs[job.job_id] = self._copy(job)

    async def list_jobs(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
    ) -> list[orchestrator_pb2.Job]:
        return [job for _, job in await self.list_page(page_size, state, tenant)]

    async def list_page(
        self,
        page_size: int = 50,
        state: orchestrator_pb2.JobState | None = None,
        tenant: str | None = None,
        after: Cursor | None = None,
    ) -> list[tuple[Cursor, orchestrator_pb2.Job]]:
        rows = [
            (cursor, self._copy(j))
            for cursor, j in self._newest_first()
            if (state is None or j.state == state)
            and (tenant is None or j.tenant == tenant)
            and (after is None or cursor < after)
        ]
        return rows[:page_size]

    async def unfinished(self) -> list[orchestrator_pb2.Job]:
        return [self._copy(j) for _, j in reversed(self._newest_first()) if j.state in UNFINISHED]

    async def add_version(
        self, previous: orchestrator_pb2.Job, latest: orchestrator_pb2.Job
    ) -> None:
        key = (previous.job_id, previous.version)
        if latest.job_id not in self.jobs:
            raise KeyError(f"cannot add version {key}")
        if key in self.old:
            raise version_taken(previous)
        self.old[key] = self._copy(previous)
        self.jobs[latest.job_id] = self._copy(latest)

    async def versions(self, job_id: str) -> list[orchestrator_pb2.Job]:
        return [self._copy(j) for (jid, _), j in sorted(self.old.items()) if jid == job_id]

    async def cache_get(self, key: str) -> stage_pb2.StageResult | None:
        result = self.cache.get(key)
        return (
            None if result is None else stage_pb2.StageResult.FromString(result.SerializeToString())
        )

    async def cache_put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        self.cache[key] = stage_pb2.StageResult.FromString(result.SerializeToString())

    async def cache_delete(self, key: str) -> None:
        self.cache.pop(key, None)

    async def create_key(self, key: ApiKey) -> None:
        if key.key_id in self.keys:
            raise KeyError(f"key id {key.key_id!r} exists")
        self.keys[key.key_id] = key

    async def get_key(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        keys = sorted(self.keys.values(), key=lambda k: k.created_at)
        return [k for k in keys if tenant is None or k.tenant == tenant]

    async def set_quota(self, tenant: str, quota: Quota) -> None:
        self.quotas[tenant] = quota

    async def get_quota(self, tenant: str) -> Quota | None:
        return self.quotas.get(tenant)

    async def usage(self, tenant: str, since: float) -> TenantUsage:
        return self._usage(tenant, since)

    def _usage(self, tenant: str, since: float) -> TenantUsage:
        mine = [j for j in self.jobs.values() if j.tenant == tenant]
        created = sorted(j.created_at.ToMicroseconds() / 1e6 for j in mine)
        return TenantUsage(
            queued=sum(j.state == orchestrator_pb2.JOB_STATE_QUEUED for j in mine),
            running=sum(j.state == orchestrator_pb2.JOB_STATE_RUNNING for j in mine),
            recent=tuple(t for t in created if t > since),
        )

    async def healthy(self) -> bool:
        return True

    async def revoke_key(self, key_id: str, revoked_at: int) -> ApiKey | None:
        key = self.keys.get(key_id)
        if key is not None and not key.revoked:
            key = self.keys[key_id] = dataclasses.replace(key, revoked_at=revoked_at)
        return key

    async def close(self) -> None:
        pass
