"""The claim loop of one orchestrator replica over PostgreSQL.

It claims jobs (`leases.JobLeases.claim`: QUEUED ones, and RUNNING ones whose
lease ran out, so it is also the sweeper that takes over a dead replica's
jobs) while the cluster has running slots, hands each to `start`, and keeps
each claimed job's lease renewed every lease/3 until `finished`. A renewal
that finds the fence stale calls `on_lost`: the job must stop without
another write. It wakes on a notification (a job enqueued or released, a
cancel asked) and otherwise every lease/3 (at most a second), so an expired
lease is taken over within lease + 1 s. `drain` stops claiming and gives
every lease back, so another replica takes those jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg

from stageflow.core.logging import get_logger
from stageflow.orchestrator.leases import (
    CANCEL_CHANNEL,
    EVENTS_CHANNEL,
    JOBS_CHANNEL,
    SLOTS_CHANNEL,
    Claim,
    JobLeases,
    listen,
)

log = get_logger(__name__)


class ClaimLoop:
    def __init__(
        self,
        leases: JobLeases,
        conninfo: str,
        *,
        max_running: int,
        start: Callable[[Claim], Awaitable[None]],
        on_lost: Callable[[str], None],
        on_cancel: Callable[[str], None],
        on_update: Callable[[str], None] = lambda _: None,
        on_event: Callable[[str], None] = lambda _: None,
    ) -> None:
        """`start(claim)` loads and starts the job; `on_lost(job_id)` stops a
        job whose lease passed on; `on_cancel(job_id)` is a cancel asked on
        any replica; `on_update(job_id)` any job row written anywhere;
        `on_event(payload)` a watch event published on any replica."""
        self._leases = leases
        self._conninfo = conninfo
        self._max_running = max_running
        self._start = start
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._on_update = on_update
        self._on_event = on_event
        self._wake = asyncio.Event()
        self._keepers: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._claiming = False

    @property
    def held(self) -> dict[str, int]:
        """Job id -> fence of every job this replica holds."""
        return {job_id: fence for job_id, (fence, _) in self._keepers.items()}

    def start(self) -> None:
        self._claiming = True
        self._tasks = [
            asyncio.create_task(self._listen(), name="claims.listen"),
            asyncio.create_task(self._loop(), name="claims.loop"),
        ]

    def wake(self) -> None:
        """Claim now (a job was enqueued here, or one of ours finished)."""
        self._wake.set()

    def finished(self, job_id: str, fence: int | None = None) -> None:
        """The job's task ended (its last write, if any, is stored): stop
        renewing. With a `fence`, only that claim's lease: a later claim of
        the same job (this replica's own lease ran out) keeps its renewals."""
        entry = self._keepers.get(job_id)
        if entry is not None and fence in (None, entry[0]):
            del self._keepers[job_id]
            entry[1].cancel()
        self.wake()

    async def drain(self) -> None:
        """Claim nothing more and give back every lease still held."""
        self._claiming = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held = list(self._keepers.items())
        self._keepers.clear()
        for job_id, (fence, keeper) in held:
            keeper.cancel()
            with contextlib.suppress(psycopg.Error):
                await self._leases.release(job_id, fence)
            log.info("job.released", job_id=job_id, fence=fence, owner=self._leases.owner)

    # --- internals ----------------------------------------------------------

    def stop_claiming(self) -> None:
        """Claim nothing more (a drain's first step); leases are still renewed
        and notifications still heard until `drain`."""
        self._claiming = False
        self._wake.set()

    def _notified(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            self._on_event(payload)
            return  # nothing to claim
        self._leases.notified(channel, payload)
        if channel == CANCEL_CHANNEL:
            self._on_cancel(payload)
        elif channel == JOBS_CHANNEL:
            self._on_update(payload)
        self._wake.set()

    async def _listen(self) -> None:
        while True:  # through a database restart: listen again
            try:
                await listen(
                    self._conninfo,
                    (JOBS_CHANNEL, CANCEL_CHANNEL, SLOTS_CHANNEL, EVENTS_CHANNEL),
                    self._notified,
                )
            except psycopg.OperationalError as err:
                log.warning("claims.listen_lost", error=str(err))
            await asyncio.sleep(self._leases.lease_seconds / 3)
            self._wake.set()  # notifications may have been missed meanwhile

    async def _loop(self) -> None:
        # An expired lease is noticed by polling: at most a second late.
        poll = min(self._leases.lease_seconds / 3, 1.0)
        while self._claiming:
            self._wake.clear()
            try:
                claim = await self._leases.claim(self._max_running)
            except psycopg.OperationalError as err:
                log.warning("claims.claim_failed", error=str(err))
                claim = None
            if claim is not None:
                self._hold(claim)
                try:
                    await self._start(claim)
                except Exception:
                    log.exception("claims.start_failed", job_id=claim.job_id)
                    self.finished(claim.job_id)
                    with contextlib.suppress(psycopg.Error):
                        await self._leases.release(claim.job_id, claim.fence)
                continue  # maybe more to claim
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    def _hold(self, claim: Claim) -> None:
        # A job claimed again by this replica (its lease ran out while the
        # database was away): the older claim's renewals are stale, stop them.
        superseded = self._keepers.get(claim.job_id)
        if superseded is not None:
            superseded[1].cancel()

        def lost() -> None:
            if self._keepers.get(claim.job_id, (None,))[0] == claim.fence:
                del self._keepers[claim.job_id]
                self._on_lost(claim.job_id)

        keeper = asyncio.create_task(
            self._leases.keep(
                claim.job_id, claim.fence, lost, lambda: self._on_cancel(claim.job_id)
            ),
            name=f"lease {claim.job_id}",
        )
        self._keepers[claim.job_id] = (claim.fence, keeper)
