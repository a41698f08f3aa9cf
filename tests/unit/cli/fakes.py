"""A fake OrchestratorService on a real grpc.aio server, in a background thread.

The CLI under test runs `asyncio.run` in the main thread (as it does for a
user), so the server needs a loop of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import grpc

from stageflow.v1 import common_pb2
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc

STAGES = ("base", "refine", "upscale")


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


# A real 1x1 PNG (the CLI embeds the recipe into it), padded by an ancillary
# chunk so it takes several GetArtifact messages.
FINAL_BYTES = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    + _chunk(b"tEXt", b"Comment\x00" + b"padding " * 8)
    + _chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    + _chunk(b"IEND", b"")
)


def carries_recipe(data: bytes, job_id: str) -> bool:
    """`data` is FINAL_BYTES with the recipe of `job_id` inserted before IEND."""
    from stageflow.client.recipe import read_recipe

    text, made = read_recipe(data)
    return data.startswith(FINAL_BYTES[:-12]) and made.get("job_id") == job_id and bool(text)


class FakeOrchestrator(pb_grpc.OrchestratorServiceServicer):
    """Records requests; `outcome` picks how jobs end.

    outcome: "succeed", "fail" (job FAILED), "bad_digest" (GetArtifact sends
    bytes that do not match the artifact's sha256, as a corrupting link would)
    or "interrupt" (sends this process SIGINT after the snapshot, as Ctrl-C
    would, then waits to be cancelled). `unavailable_downloads` GetArtifact
    calls are answered UNAVAILABLE first, as an orchestrator being restarted
    is. GetArtifact sends `chunk_bytes` per message, so a small artifact still
    takes several.
    """

    def __init__(self, outcome: str = "succeed", chunk_bytes: int = 16) -> None:
        self.outcome = outcome
        self.chunk_bytes = chunk_bytes
        self.artifacts: dict[str, bytes] = {}  # key -> bytes, what GetArtifact serves
        self.artifact_requests: list[pb.GetArtifactRequest] = []
        self.unavailable_downloads = 0
        self.submits: list[pb.SubmitJobRequest] = []
        self.validations: list[pb.SubmitJobRequest] = []  # validate_only submits
        self.list_requests: list[pb.ListJobsRequest] = []
        self.cancels: list[str] = []
        self.jobs: dict[str, pb.Job] = {}
        self.by_request_id: dict[str, str] = {}  # idempotency key -> job id
        self.watch_delay = 0.0  # seconds each watch waits after the snapshot
        self.watching = 0
        self.peak_watching = 0

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        if request.validate_only:  # the real one's contract: checked, nothing stored
            self.validations.append(request)
            if request.width % 8:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"width: must be a multiple of 8 in [64, 1024], got {request.width}",
                )
            return pb.SubmitJobResponse(job=pb.Job(bundle=request.bundle))
        self.submits.append(request)
        if request.request_id in self.by_request_id:
            return pb.SubmitJobResponse(job=self.jobs[self.by_request_id[request.request_id]])
        if request.width % 8:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"width: must be a multiple of 8 in [64, 1024], got {request.width}",
            )
        job = pb.Job(
            job_id=f"job-{len(self.submits)}",
            state=pb.JOB_STATE_QUEUED,
            bundle=request.bundle,
            seed=request.seed,
            width=request.width,
            height=request.height,
            stages=[pb.StageRun(stage=s, state=pb.STAGE_STATE_PENDING) for s in STAGES],
            request=request,
        )
        self.jobs[job.job_id] = job
        if request.request_id:
            self.by_request_id[request.request_id] = job.job_id
        return pb.SubmitJobResponse(job=job)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> pb.Job:
        if job_id not in self.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return self.jobs[job_id]

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        job = await self._job(request.job_id, context)
        yield pb.WatchJobResponse(job_id=job.job_id, snapshot=job)
        self.watching += 1
        self.peak_watching = max(self.peak_watching, self.watching)
        try:
            await asyncio.sleep(self.watch_delay)
        finally:
            self.watching -= 1
        if self.outcome == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(30)  # the client cancels this call long before
            return
        for i, stage in enumerate(STAGES):
            yield pb.WatchJobResponse(job_id=job.job_id, stage_started=pb.StageStarted(stage=stage))
            for step in (1, 2):
                progress = pb.StageProgress(stage=stage, step=step, total_steps=2)
                yield pb.WatchJobResponse(job_id=job.job_id, stage_progress=progress)
            failed = self.outcome == "fail" and stage == "refine"
            run = job.stages[i]
            run.state = pb.STAGE_STATE_FAILED if failed else pb.STAGE_STATE_SUCCEEDED
            run.step = run.total_steps = 2
            run.model.CopyFrom(
                common_pb2.ModelInfo(name=f"tiny-{stage}", version="1", backend="torch")
            )
            run.timing.CopyFrom(
                common_pb2.Timing(
                    queue_ms=1, load_inputs_ms=2, compute_ms=30, store_output_ms=4, total_ms=37
                )
            )
            if failed:
                run.error = "RESOURCE_EXHAUSTED: refine queue is full"
            yield pb.WatchJobResponse(job_id=job.job_id, stage_finished=pb.StageFinished(run=run))
            if failed:
                job.state = pb.JOB_STATE_FAILED
                job.error = "refine: RESOURCE_EXHAUSTED: refine queue is full"
                yield pb.WatchJobResponse(job_id=job.job_id, finished=job)
                return
        key = f"{job.job_id}.png"
        self.artifacts[key] = FINAL_BYTES
        job.state = pb.JOB_STATE_SUCCEEDED
        job.version = 1
        job.final.CopyFrom(
            common_pb2.ArtifactRef(
                key=key,
                sha256=hashlib.sha256(FINAL_BYTES).hexdigest(),
                size_bytes=len(FINAL_BYTES),
                media_type="image/png",
            )
        )
        job.stages[-1].output.CopyFrom(job.final)
        yield pb.WatchJobResponse(job_id=job.job_id, finished=job)

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=await self._job(request.job_id, context))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        self.list_requests.append(request)
        if request.page_size > 500:
            await context.abort(grpc.StatusCode.INTERNAL, "database is locked")
        return pb.ListJobsResponse(jobs=list(self.jobs.values())[: request.page_size])

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetArtifactResponse]:
        """The real one's contract, for versions 0 and 1: the final or a stage's output."""
        self.artifact_requests.append(request)
        if self.unavailable_downloads > 0:
            self.unavailable_downloads -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        job = await self._job(request.job_id, context)
        if request.version not in (0, 1):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.version}")
        refs = {run.stage: run.output for run in job.stages if run.output.key}
        ref = refs.get(request.stage) if request.stage else job.final
        if request.key:
            ref = next((r for r in (job.final, *refs.values()) if r.key == request.key), None)
        if ref is None or not ref.key:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such artifact")
        assert ref is not None
        data = self.artifacts[ref.key]
        if self.outcome == "bad_digest":
            data = data[:-1] + bytes([data[-1] ^ 1])  # one bit flipped on the way
        for start in range(0, len(data), self.chunk_bytes):
            first = start == 0
            yield pb.GetArtifactResponse(
                artifact=ref if first else None, data=data[start : start + self.chunk_bytes]
            )

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        job = await self._job(request.job_id, context)
        self.cancels.append(request.job_id)
        job.state = pb.JOB_STATE_CANCELLED
        return pb.CancelJobResponse(job=job)


class ServerThread:
    """Serves a servicer on 127.0.0.1:<free port> from a thread with its own loop."""

    def __init__(self, servicer: FakeOrchestrator) -> None:
        self.servicer = servicer
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        server = grpc.aio.server()
        pb_grpc.add_OrchestratorServiceServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake orchestrator did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
