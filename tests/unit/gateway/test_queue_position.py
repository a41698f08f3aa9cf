"""A queued job's place in the queue on the way to the browser: the SSE
stream's `queued` events (GetJob re-read while the job waits) and the
progress panel's "Queued: position N"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import cast

from stageflow.client import StageflowClient
from stageflow.gateway.events import job_events
from stageflow.gateway.workspace.render import templates
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.client.test_recipe import _job

POLL = 0.01


class QueueClient:
    """WatchJob: a QUEUED snapshot, then (once `start` is set) stage_started
    and finished; GetJob: the positions in `positions`, one per call, the last
    one repeated."""

    def __init__(self, positions: list[int]) -> None:
        self.job = _job()
        self.job.state = pb.JOB_STATE_QUEUED
        self.job.queue_position = 3
        for run in self.job.stages:
            run.Clear()
            run.stage, run.state = "base", pb.STAGE_STATE_PENDING
        self.positions = positions
        self.start = asyncio.Event()
        self.reads = 0

    async def watch(self, job_id: str) -> AsyncGenerator[pb.WatchJobResponse, None]:
        yield pb.WatchJobResponse(job_id=job_id, snapshot=self.job)
        await self.start.wait()
        stage = self.job.stages[0].stage
        yield pb.WatchJobResponse(job_id=job_id, stage_started=pb.StageStarted(stage=stage))
        done = pb.Job()
        done.CopyFrom(self.job)
        done.state = pb.JOB_STATE_CANCELLED
        yield pb.WatchJobResponse(job_id=job_id, finished=done)

    async def get(self, job_id: str) -> pb.Job:
        self.reads += 1
        job = pb.Job()
        job.CopyFrom(self.job)
        job.queue_position = self.positions[min(self.reads, len(self.positions)) - 1]
        if self.reads == len(self.positions):
            self.start.set()  # the job starts once the queue ran through
        return job


def _frames(text: list[str]) -> list[tuple[str, dict[str, object]]]:
    out = []
    for frame in text:
        lines = dict(line.split(": ", 1) for line in frame.strip().splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_a_queued_job_streams_its_position_when_it_moves_and_stops_once_started() -> None:
    client = QueueClient([3, 2, 2, 1])
    frames = _frames([f async for f in job_events(cast(StageflowClient, client), "j1", None, POLL)])
    kinds = [kind for kind, _ in frames]
    assert kinds == ["snapshot", "queued", "queued", "stage_started", "finished"]
    assert frames[0][1]["queue_position"] == 3
    assert [data["queue_position"] for kind, data in frames if kind == "queued"] == [2, 1]
    assert frames[1][1]["job_id"] == "j1"
    assert client.reads == 4  # no re-read once the job started


def _panel(job: pb.Job) -> str:
    return templates.env.get_template("_progress.html").render(job=job)


def test_the_progress_panel_shows_a_queued_jobs_position() -> None:
    job = _job()
    job.state = pb.JOB_STATE_QUEUED
    job.queue_position = 2
    html = _panel(job)
    assert 'Queued: position <span class="queue-n">2</span>' in html
    assert 'class="queue-position" hidden' not in html
    job.queue_position = 0  # unknown: the place is there for workspace.js, hidden
    assert 'class="queue-position" hidden' in _panel(job)
    job.state = pb.JOB_STATE_RUNNING
    assert "queue-position" not in _panel(job)
