"""WatchJob as Server-Sent Events, resumable with Last-Event-ID.

Each event's id is its place in the job's history, the same on every
connection: ``<version>.<stage index>.<phase>.<step>`` (phase 0 started, 1
progress, 2 finished; the job's `finished` is stage index 99). A reconnect
with Last-Event-ID watches again and derives, from the fresh snapshot, every
stage event past that id (a stage that started or finished meanwhile is sent
as stage_started / stage_finished; progress as its latest step), then
streams live events past it, so no stage event is lost and none repeats.

While the job is QUEUED its place in the queue moves as other jobs start,
which WatchJob sends no event for: every QUEUE_POLL_SECONDS without an event
the stream reads GetJob and sends a `queued` event (no id:
``{"job_id": ..., "queue_position": N}``) when the position changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from stageflow.client import StageflowClient, StageflowClientError
from stageflow.gateway.convert import to_json
from stageflow.gateway.errors import error_body, from_exception
from stageflow.v1 import orchestrator_pb2 as pb

EventId = tuple[int, int, int, int]
QUEUE_POLL_SECONDS = 2.0
JOB_DONE = 99
_STAGE_DONE = {pb.STAGE_STATE_SUCCEEDED, pb.STAGE_STATE_FAILED, pb.STAGE_STATE_CANCELLED}
_JOB_DONE = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def parse_event_id(text: str | None) -> EventId | None:
    if not text:
        return None
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        return None
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def _sse(event_id: EventId | None, kind: str, data: object) -> str:
    head = f"id: {'.'.join(map(str, event_id))}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _from_snapshot(job: pb.Job) -> list[tuple[EventId, str, pb.WatchJobResponse]]:
    """The stage events a snapshot implies, in history order."""
    out: list[tuple[EventId, str, pb.WatchJobResponse]] = []
    v = job.version or 1
    for i, run in enumerate(job.stages):
        if run.state == pb.STAGE_STATE_PENDING:
            continue
        out.append(
            (
                (v, i, 0, 0),
                "stage_started",
                pb.WatchJobResponse(
                    job_id=job.job_id, stage_started=pb.StageStarted(stage=run.stage)
                ),
            )
        )
        if run.step:
            progress = pb.StageProgress(stage=run.stage, step=run.step, total_steps=run.total_steps)
            out.append(
                (
                    (v, i, 1, run.step),
                    "stage_progress",
                    pb.WatchJobResponse(job_id=job.job_id, stage_progress=progress),
                )
            )
        if run.state in _STAGE_DONE:
            out.append(
                (
                    (v, i, 2, 0),
                    "stage_finished",
                    pb.WatchJobResponse(
                        job_id=job.job_id, stage_finished=pb.StageFinished(run=run)
                    ),
                )
            )
    if job.state in _JOB_DONE:
        out.append(
            ((v, JOB_DONE, 0, 0), "finished", pb.WatchJobResponse(job_id=job.job_id, finished=job))
        )
    return out


def _event_id(job: pb.Job, event: pb.WatchJobResponse) -> EventId:
    kind = event.WhichOneof("event")
    v = job.version or 1
    names = [run.stage for run in job.stages]

    def index(stage: str) -> int:
        return names.index(stage) if stage in names else 0

    if kind == "stage_started":
        return (v, index(event.stage_started.stage), 0, 0)
    if kind == "stage_progress":
        return (v, index(event.stage_progress.stage), 1, event.stage_progress.step)
    if kind == "stage_finished":
        return (v, index(event.stage_finished.run.stage), 2, 0)
    return (v, JOB_DONE, 0, 0)


async def _watched(
    client: StageflowClient, job_id: str, poll_seconds: float
) -> AsyncIterator[pb.WatchJobResponse | pb.Job]:
    """The job's WatchJob events and, while the last snapshot was QUEUED and no
    event came since, the job read again (a Job) after each `poll_seconds`
    without an event."""
    stream = client.watch(job_id)
    pending = asyncio.ensure_future(anext(stream))
    queued = False
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=poll_seconds if queued else None)
            if not done:
                yield await client.get(job_id)
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(anext(stream))
            queued = event.WhichOneof("event") == "snapshot" and (
                event.snapshot.state == pb.JOB_STATE_QUEUED
            )
            yield event
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending  # the cancelled read ends the stream
        await stream.aclose()


async def job_events(
    client: StageflowClient,
    job_id: str,
    last_id: EventId | None,
    poll_seconds: float = QUEUE_POLL_SECONDS,
) -> AsyncIterator[str]:
    """SSE frames: `snapshot` (no id) on a fresh connection, then the events
    past `last_id`; `queued` (no id) when a queued job's position moved."""
    job: pb.Job | None = None
    try:
        async for event in _watched(client, job_id, poll_seconds):
            if isinstance(event, pb.Job):
                if job is not None and event.queue_position != job.queue_position:
                    job.queue_position = event.queue_position
                    data = {"job_id": job_id, "queue_position": event.queue_position}
                    yield _sse(None, "queued", data)
                continue
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                job = event.snapshot
                if last_id is None:
                    yield _sse(None, "snapshot", to_json(job))
                derived = _from_snapshot(job)
                for event_id, name, message in derived:
                    if last_id is None or event_id > last_id:
                        yield _sse(event_id, name, to_json(message))
                        last_id = event_id
                if derived and derived[-1][1] == "finished":
                    return
                continue
            assert job is not None
            event_id = _event_id(job, event)
            if last_id is not None and event_id <= last_id:
                continue  # already sent (from the snapshot, or before the reconnect)
            last_id = event_id
            yield _sse(event_id, kind or "event", to_json(event))
    except StageflowClientError as err:
        _, code, text, field = from_exception(err)
        yield _sse(None, "error", error_body(code, text, field))
