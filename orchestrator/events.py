"""The watch hub: job events fanned out to every WatchJob stream of that job.

The runner publishes as a job moves (stage started, progress, stage finished,
finished); a watcher gets the job's snapshot first and then every event after
it, ending with `finished`. Publishing never blocks: each watcher has its own
unbounded queue, and a job with no watchers costs nothing. A closed hub (the
orchestrator is shutting down) ends every stream without `finished`: the
watcher reconnects to the next process, which resumes the job.

With several orchestrator replicas a job's events are made where the job
runs and watched wherever a client asked: `relay` gets every published
event (the replica sends it on, e.g. PostgreSQL NOTIFY) and `deliver` feeds
one received from another replica to this hub's watchers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from stageflow.orchestrator.store import TERMINAL
from stageflow.v1 import orchestrator_pb2

Job = orchestrator_pb2.Job
WatchJobResponse = orchestrator_pb2.WatchJobResponse


# Put in a watcher's queue to end its stream early.
_CLOSED = WatchJobResponse()


class EventHub:
    def __init__(
        self,
        relay: Callable[[WatchJobResponse], None] | None = None,
        recheck_seconds: float | None = None,
    ) -> None:
        """`recheck_seconds`: a stream that got no event for this long reads
        the snapshot again and ends with it if the job has finished (a relayed
        `finished` can be lost with a database connection); None: never."""
        self._subscribers: dict[str, set[asyncio.Queue[WatchJobResponse]]] = {}
        self._closed = False
        self._relay = relay
        self._recheck = recheck_seconds

    def watched(self, job_id: str) -> bool:
        """Whether some stream of this hub watches the job now."""
        return bool(self._subscribers.get(job_id))

    def close(self) -> None:
        """End every stream now (after its pending events) and every later one
        right after its snapshot."""
        self._closed = True
        for subscribers in self._subscribers.values():
            for queue in subscribers:
                queue.put_nowait(_CLOSED)

    def publish(self, job_id: str, **event: Any) -> None:
        """Send one `WatchJobResponse` event (a keyword of its `event` oneof:
        stage_started, stage_progress, stage_finished, finished) to the job's
        watchers. The message is built here: later changes to `event`'s values
        are not seen."""
        subscribers = self._subscribers.get(job_id)
        if not subscribers and self._relay is None:
            return
        message = WatchJobResponse(job_id=job_id, **event)
        if self._relay is not None:
            self._relay(message)
        self.deliver(message)

    def deliver(self, message: WatchJobResponse) -> None:
        """Hand an event (one another replica published) to this hub's watchers."""
        for queue in self._subscribers.get(message.job_id, ()):
            queue.put_nowait(message)

    async def watch(
        self, job_id: str, snapshot: Callable[[str], Awaitable[Job]]
    ) -> AsyncIterator[WatchJobResponse]:
        """`snapshot(job_id)` (whose errors, e.g. NotFound, propagate), then every
        event published for the job, ending with `finished`; a job already
        finished yields its snapshot and `finished` at once."""
        queue: asyncio.Queue[WatchJobResponse] = asyncio.Queue()
        # Subscribe before reading the snapshot: an event in between is seen
        # (at worst twice), never lost.
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            job = await snapshot(job_id)
            yield WatchJobResponse(job_id=job_id, snapshot=job)
            if job.state in TERMINAL:
                yield WatchJobResponse(job_id=job_id, finished=job)
                return
            while not self._closed or not queue.empty():
                try:
                    async with asyncio.timeout(self._recheck):
                        event = await queue.get()
                except TimeoutError:
                    job = await snapshot(job_id)
                    if job.state in TERMINAL:
                        yield WatchJobResponse(job_id=job_id, finished=job)
                        return
                    continue
                if event is _CLOSED:
                    return
                yield event
                if event.WhichOneof("event") == "finished":
                    return
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[job_id]
