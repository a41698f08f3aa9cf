"""The watch hub across replicas: what one hub publishes is relayed, another
hub delivers it to its own streams, and a stream whose `finished` never came
ends with the stored job once it has finished."""

from __future__ import annotations

import asyncio

from stageflow.orchestrator.events import EventHub
from stageflow.v1 import orchestrator_pb2 as pb


async def test_published_events_reach_another_hubs_watchers_through_the_relay() -> None:
    relayed: list[pb.WatchJobResponse] = []
    owner = EventHub(relay=relayed.append)
    elsewhere = EventHub()
    job = pb.Job(job_id="j", state=pb.JOB_STATE_RUNNING)

    async def snapshot(job_id: str) -> pb.Job:
        return job

    stream = elsewhere.watch("j", snapshot)
    assert (await anext(stream)).snapshot == job
    # No watcher on the owner's hub: the events are relayed all the same.
    owner.publish("j", stage_progress=pb.StageProgress(stage="base", step=3, total_steps=8))
    done = pb.Job(job_id="j", state=pb.JOB_STATE_SUCCEEDED)
    owner.publish("j", finished=done)
    assert [m.WhichOneof("event") for m in relayed] == ["stage_progress", "finished"]
    assert elsewhere.watched("j") and not owner.watched("j")
    for message in relayed:
        elsewhere.deliver(message)
    rest = [event async for event in stream]
    assert rest[0].stage_progress.step == 3 and rest[-1].finished == done
    assert not elsewhere.watched("j")


async def test_a_stream_rechecks_the_store_when_no_event_comes() -> None:
    hub = EventHub(recheck_seconds=0.05)
    states = iter([pb.JOB_STATE_RUNNING, pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLED])

    async def snapshot(job_id: str) -> pb.Job:
        return pb.Job(job_id=job_id, state=next(states))

    async with asyncio.timeout(5):
        events = [event async for event in hub.watch("j", snapshot)]
    assert events[0].snapshot.state == pb.JOB_STATE_RUNNING
    assert [e.finished.state for e in events[1:]] == [pb.JOB_STATE_CANCELLED]


async def test_without_recheck_a_stream_waits_for_its_event() -> None:
    hub = EventHub()

    async def snapshot(job_id: str) -> pb.Job:
        return pb.Job(job_id=job_id, state=pb.JOB_STATE_RUNNING)

    stream = hub.watch("j", snapshot)
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    hub.publish("j", finished=pb.Job(job_id="j", state=pb.JOB_STATE_FAILED))
    assert (await waiting).finished.state == pb.JOB_STATE_FAILED
