"""Leases over PostgreSQL: which orchestrator replica runs which job, fenced.

Every replica serves every job's reads; only the replica holding a job's
lease runs it. A QUEUED job (and a RUNNING one whose lease ran out: its
replica died or paused) is claimed with `SELECT ... FOR UPDATE SKIP LOCKED`,
interactive lane before bulk, then oldest. A claim bumps the job's `fence`;
every stage-boundary write of the job goes through `write`, which updates the
`jobs` row only while the lease row still carries that fence, in the same
statement, so a replica that lost its job (SIGSTOP past its lease, a network
partition) has its writes refused by the database (`LeaseLost`) and stops the
job instead of overwriting the new owner's progress.

Claims are serialized by one transaction-scoped advisory lock: the count of
live leases (cluster-wide `max_running_jobs`) and of a tenant's live leases
(its `max_running`) is then exact, not a race between replicas. A claim is a
few milliseconds, so serializing them costs nothing next to a stage call.

Stage-call slots work the same way (`stage_slots`, one row per slot, claimed
with SKIP LOCKED under a lease): the calls in flight to one service across
all replicas never exceed its limit. Job updates and cancel requests are
announced with NOTIFY carrying only the job id (payloads are capped at 8000
bytes; a Job may be larger): listeners fetch the row.

Lease times are the database's clock, so replicas' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from stageflow.core.logging import get_logger
from stageflow.orchestrator.coordination import LeaseLost
from stageflow.orchestrator.scheduler import lane_of
from stageflow.v1 import orchestrator_pb2

Job = orchestrator_pb2.Job
T = TypeVar("T")

log = get_logger(__name__)

# NOTIFY channels: a job's row changed (payload: job id); a cancel was asked.
JOBS_CHANNEL = "stageflow_jobs"
CANCEL_CHANNEL = "stageflow_cancel"
SLOTS_CHANNEL = "stageflow_slots"
# A watch event of a running job, for the WatchJob streams other replicas serve.
EVENTS_CHANNEL = "stageflow_events"
# NOTIFY payloads must stay under 8000 bytes.
MAX_PAYLOAD = 7900
# pg_advisory_xact_lock key of the claim step (any fixed bigint).
_CLAIM_LOCK = 0x5747_464C_4F57_0001

_LIVE = "owner IS NOT NULL AND lease_until > clock_timestamp() AND NOT done"

_CLAIM_RUNNING = f"SELECT count(*) FROM job_leases WHERE {_LIVE}"
# The first claimable job whose tenant has a running slot left.
_CLAIM_PICK = """
SELECT l.job_id FROM job_leases l
WHERE NOT l.done
  AND (l.owner IS NULL OR l.lease_until <= clock_timestamp())
  AND (l.tenant_limit IS NULL OR l.tenant_limit > (
        SELECT count(*) FROM job_leases r
        WHERE r.tenant = l.tenant AND r.owner IS NOT NULL
          AND r.lease_until > clock_timestamp() AND NOT r.done))
ORDER BY l.lane, l.created_at, l.job_id
LIMIT 1
FOR UPDATE OF l SKIP LOCKED
"""
# A claimable job's place in the claim order (_CLAIM_PICK's ORDER BY): 1 +
# the claimable jobs before it; no row when it is claimed or done.
_QUEUE_POSITION = """
SELECT 1 + (
    SELECT count(*) FROM job_leases l
    WHERE NOT l.done
      AND (l.owner IS NULL OR l.lease_until <= clock_timestamp())
      AND (l.lane, l.created_at, l.job_id) < (me.lane, me.created_at, me.job_id))
FROM job_leases me
WHERE me.job_id = %s AND NOT me.done
  AND (me.owner IS NULL OR me.lease_until <= clock_timestamp())
"""
# A claimable job whose cancel was asked: taken past every limit, since all its
# owner does is store it CANCELLED.
_CLAIM_CANCELLED = """
SELECT job_id FROM job_leases
WHERE NOT done AND cancel_requested
  AND (owner IS NULL OR lease_until <= clock_timestamp())
ORDER BY created_at, job_id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
_CLAIM_TAKE = """
UPDATE job_leases
SET owner = %s, fence = fence + 1,
    lease_until = clock_timestamp() + make_interval(secs => %s)
WHERE job_id = %s
RETURNING fence, cancel_requested
"""
# The jobs row changes only while the lease row still holds this fence; FOR
# SHARE makes a concurrent claim wait for this write rather than slip past it.
_FENCED_WRITE = """
UPDATE jobs SET state = %s, updated_at = %s, job = %s
WHERE job_id = %s
  AND EXISTS (SELECT 1 FROM job_leases WHERE job_id = %s AND fence = %s FOR SHARE)
"""


@dataclass(frozen=True)
class Claim:
    job_id: str
    fence: int
    cancel_requested: bool


class JobLeases:
    """The lease table over a psycopg pool (autocommit connections), as `owner`
    (this replica's unique name)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection],
        owner: str,
        lease_seconds: float,
        *,
        retry_seconds: float = 120.0,
    ) -> None:
        """`retry_seconds`: how long a job's write and a slot's claim wait out a
        database that cannot be reached (a restart) before failing."""
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self._pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.retry_seconds = retry_seconds
        # Set when a slot was released anywhere (a SLOTS_CHANNEL notification
        # passed to `notified`): waiters retry at once instead of at the next poll.
        self._slot_freed = asyncio.Event()

    async def _bounded(self, conn: psycopg.AsyncConnection) -> None:
        """Bound this transaction's locks by half a lease: a replica paused
        (SIGSTOP) inside one has its session ended by the server, so it cannot
        hold the claim lock or a lease row from every other replica; one that
        waits longer for a lock fails (OperationalError) and tries again."""
        ms = max(int(self.lease_seconds * 500), 100)
        await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
        await conn.execute(f"SET LOCAL lock_timeout = {ms}")

    def conninfo(self) -> str:
        """How to open a connection of our own (LISTEN): the pool's, with its
        connection arguments (a password given apart from the URL)."""
        kwargs = self._pool.kwargs if isinstance(self._pool.kwargs, dict) else {}
        extra = {
            k: v for k, v in kwargs.items() if isinstance(v, str | int) and not isinstance(v, bool)
        }
        conninfo = self._pool.conninfo
        assert isinstance(conninfo, str)
        return psycopg.conninfo.make_conninfo(conninfo, **extra)

    def notified(self, channel: str, payload: str) -> None:
        """Feed a `listen` notification in (slot waiters wake on a release)."""
        if channel == SLOTS_CHANNEL:
            self._slot_freed.set()

    # --- jobs -------------------------------------------------------------

    async def enqueue(self, job: Job, tenant_limit: int | None = None) -> None:
        """Make the job claimable (a new job, or a rerun's new version); an
        upsert, retried while the database cannot be reached."""
        await self._retrying(lambda: self._enqueue(job, tenant_limit))

    async def _enqueue(self, job: Job, tenant_limit: int | None) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO job_leases (job_id, lane, tenant, tenant_limit, created_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET "
                "done = FALSE, owner = NULL, lease_until = NULL, cancel_requested = FALSE, "
                "lane = excluded.lane, tenant_limit = excluded.tenant_limit, "
                "created_at = excluded.created_at",
                (
                    job.job_id,
                    lane_of(job.request.priority),
                    job.tenant,
                    tenant_limit,
                    job.created_at.ToMicroseconds(),
                ),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, job.job_id))

    async def adopt(self, jobs: list[Job], tenant_limit: Callable[[Job], int | None]) -> int:
        """Make claimable the unfinished `jobs` without a live lease row (the
        replica that stored one died before `enqueue`); returns how many."""
        added = 0
        async with self._pool.connection() as conn:
            for job in jobs:
                cur = await conn.execute(
                    "INSERT INTO job_leases (job_id, lane, tenant, tenant_limit, created_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET "
                    "done = FALSE, owner = NULL, lease_until = NULL WHERE job_leases.done",
                    (
                        job.job_id,
                        lane_of(job.request.priority),
                        job.tenant,
                        tenant_limit(job),
                        job.created_at.ToMicroseconds(),
                    ),
                )
                added += cur.rowcount
            if added:
                await conn.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        return added

    async def announce(self, payload: str) -> None:
        """NOTIFY a watch event (at most MAX_PAYLOAD characters)."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, payload))

    async def claim(self, max_running: int) -> Claim | None:
        """The next job to run (its fence bumped, leased to us), or None when
        nothing is claimable or `max_running` leases are live cluster-wide
        (a job whose cancel was asked is claimed regardless: it only ends)."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._bounded(conn)
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
            row = await (await conn.execute(_CLAIM_CANCELLED)).fetchone()
            if row is None:
                running = await _scalar(conn, _CLAIM_RUNNING)
                if running >= max_running:
                    return None
                row = await (await conn.execute(_CLAIM_PICK)).fetchone()
                if row is None:
                    return None
            job_id = row[0]
            taken = await (
                await conn.execute(_CLAIM_TAKE, (self.owner, self.lease_seconds, job_id))
            ).fetchone()
            assert taken is not None  # locked above
            log.info("job.claimed", job_id=job_id, fence=taken[0], owner=self.owner)
            return Claim(job_id, int(taken[0]), bool(taken[1]))

    async def renew(self, job_id: str, fence: int) -> bool:
        """Extend our lease; False when the fence is stale (the job is lost)."""
        return await self._renew(job_id, fence) is not None

    async def _renew(self, job_id: str, fence: int) -> bool | None:
        """Extend our lease: whether a cancel was asked, None when it is lost."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE job_leases SET lease_until = clock_timestamp() + "
                    "make_interval(secs => %s) WHERE job_id = %s AND fence = %s AND owner = %s "
                    "AND NOT done RETURNING cancel_requested",
                    (self.lease_seconds, job_id, fence, self.owner),
                )
            ).fetchone()
            return None if row is None else bool(row[0])

    async def _finished(self, job_id: str, fence: int) -> bool:
        """Whether the lease under `fence` ended by its owner's final write (a
        renewal racing that write finds the lease gone, but the job is done,
        not lost). Unknown (the database away) counts as not finished."""
        try:
            async with self._pool.connection() as conn:
                row = await (
                    await conn.execute(
                        "SELECT done FROM job_leases WHERE job_id = %s AND fence = %s",
                        (job_id, fence),
                    )
                ).fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and bool(row[0])

    async def write(self, job: Job, fence: int, *, final: bool = False) -> None:
        """Store `job` as its latest row if `fence` is still the job's; `final`
        also ends the lease (one transaction). Raises LeaseLost otherwise.
        While the database cannot be reached the write is retried (for
        `retry_seconds`): it replaces the whole row, so one that did commit
        before its connection broke is harmless to do again, and the fence
        still decides."""
        await self._retrying(lambda: self._write(job, fence, final))

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        deadline = asyncio.get_running_loop().time() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                return await fn()
            except psycopg.OperationalError as err:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                log.warning("leases.db_unreachable", error=str(err), retry_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write(self, job: Job, fence: int, final: bool) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await self._bounded(conn)
            cur = await conn.execute(
                _FENCED_WRITE,
                (
                    orchestrator_pb2.JobState.Name(job.state),
                    job.updated_at.ToMicroseconds(),
                    job.SerializeToString(),
                    job.job_id,
                    job.job_id,
                    fence,
                ),
            )
            if cur.rowcount != 1:
                log.warning("job.fenced_out", job_id=job.job_id, fence=fence, owner=self.owner)
                raise LeaseLost(job.job_id, fence)
            if final:
                await conn.execute(
                    "UPDATE job_leases SET done = TRUE, owner = NULL, lease_until = NULL "
                    "WHERE job_id = %s AND fence = %s",
                    (job.job_id, fence),
                )
            await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, job.job_id))

    async def release(self, job_id: str, fence: int) -> None:
        """Give the job back unfinished (a graceful drain): claimable at once."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE job_leases SET owner = NULL, lease_until = NULL "
                "WHERE job_id = %s AND fence = %s AND owner = %s",
                (job_id, fence, self.owner),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, job_id))

    async def request_cancel(self, job_id: str) -> bool:
        """Mark the job cancel-requested and tell its owner; False when it is
        not waiting or running (finished, or never enqueued)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE job_leases SET cancel_requested = TRUE WHERE job_id = %s AND NOT done",
                (job_id,),
            )
            if cur.rowcount == 1:
                await conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, job_id))
            return cur.rowcount == 1

    async def cancel_requested(self, job_id: str) -> bool:
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT cancel_requested FROM job_leases WHERE job_id = %s", (job_id,)
                )
            ).fetchone()
            return bool(row and row[0])

    async def queue_position(self, job_id: str) -> int:
        """Where an unclaimed job stands in the cluster's claim order (1 = next
        claimed, tenant limits aside); 0 when it is claimed, done or unknown."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_QUEUE_POSITION, (job_id,))).fetchone()
            return int(row[0]) if row is not None else 0

    async def running(self) -> int:
        """Live leases cluster-wide."""
        async with self._pool.connection() as conn:
            return await _scalar(conn, _CLAIM_RUNNING)

    # --- stage slots ------------------------------------------------------

    async def try_slot(self, service: str, limit: int, *, bulk: bool = False) -> int | None:
        """One of `service`'s `limit` call slots, leased to us, or None when all
        are held by live leases (`bulk`: also while an interactive call waits
        for one on any replica)."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._bounded(conn)
            await conn.execute(
                "INSERT INTO stage_slots (service, slot) SELECT %s, g FROM generate_series(0, %s) g"
                " ON CONFLICT DO NOTHING",
                (service, limit - 1),
            )
            row = await (
                await conn.execute(
                    "SELECT slot FROM stage_slots WHERE service = %s AND slot < %s "
                    "AND (owner IS NULL OR lease_until <= clock_timestamp()) "
                    "AND NOT (%s AND EXISTS (SELECT 1 FROM stage_slot_waiters w "
                    "  WHERE w.service = %s AND w.lease_until > clock_timestamp())) "
                    "ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (service, limit, bulk, service),
                )
            ).fetchone()
            if row is None:
                return None
            await conn.execute(
                "UPDATE stage_slots SET owner = %s, "
                "lease_until = clock_timestamp() + make_interval(secs => %s) "
                "WHERE service = %s AND slot = %s",
                (self.owner, self.lease_seconds, service, row[0]),
            )
            return int(row[0])

    async def _wait_for_slot(self, waiter: str, service: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO stage_slot_waiters (waiter, service, lease_until) "
                "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (waiter) DO UPDATE SET lease_until = excluded.lease_until",
                (waiter, service, self.lease_seconds),
            )

    async def _stop_waiting(self, waiter: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("DELETE FROM stage_slot_waiters WHERE waiter = %s", (waiter,))

    async def renew_slot(self, service: str, slot: int) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE stage_slots SET lease_until = clock_timestamp() + make_interval(secs => %s)"
                " WHERE service = %s AND slot = %s AND owner = %s",
                (self.lease_seconds, service, slot, self.owner),
            )
            return cur.rowcount == 1

    async def release_slot(self, service: str, slot: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE stage_slots SET owner = NULL, lease_until = NULL "
                "WHERE service = %s AND slot = %s AND owner = %s",
                (service, slot, self.owner),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (SLOTS_CHANNEL, service))

    @contextlib.asynccontextmanager
    async def slot(
        self, service: str, limit: int, *, bulk: bool = False, poll_seconds: float = 0.2
    ) -> AsyncIterator[int]:
        """Hold one of `service`'s slots for a call, renewed every lease/3. An
        interactive call that has to wait says so in `stage_slot_waiters`, so
        bulk calls on every replica leave the slots to it (lanes cluster-wide)."""
        waiter = ""
        try:
            while True:
                self._slot_freed.clear()
                slot = await self._retrying(lambda: self.try_slot(service, limit, bulk=bulk))
                if slot is not None:
                    break
                if not bulk:
                    waiter = waiter or f"{self.owner}/{secrets.token_hex(6)}"
                    await self._retrying(functools.partial(self._wait_for_slot, waiter, service))
                # Woken by a release's notification, else polled (a lease that expired).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), poll_seconds)
        finally:
            if waiter:
                with contextlib.suppress(psycopg.OperationalError):  # else its lease runs out
                    await self._stop_waiting(waiter)
        renewer = asyncio.create_task(self._keep_slot(service, slot))
        try:
            yield slot
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self.release_slot(service, slot)
            except psycopg.OperationalError:  # its lease runs out instead
                log.warning("stage.slot_release_failed", service=service, slot=slot)

    async def _keep_slot(self, service: str, slot: int) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                ok = await self.renew_slot(service, slot)
            except psycopg.OperationalError:
                continue  # the database is away: try again at the next third
            finally:
                _stop_if_cancelled()
            if not ok:
                log.warning("stage.slot_lost", service=service, slot=slot, owner=self.owner)
                return

    # --- the lease of a running job ---------------------------------------

    async def keep(
        self,
        job_id: str,
        fence: int,
        on_lost: Callable[[], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        """Renew the job's lease every lease/3 until cancelled; call `on_lost`
        (and return) when a renewal finds the fence stale, and `on_cancel` at
        each renewal that finds a cancel asked (a NOTIFY missed while the
        LISTEN connection was down is caught up this way)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                cancel = await self._renew(job_id, fence)
            except psycopg.OperationalError:
                log.warning("job.lease_renew_failed", job_id=job_id)
                continue  # the lease may still hold; the next write's fence decides
            finally:
                _stop_if_cancelled()
            if cancel and on_cancel is not None:
                on_cancel()
            if cancel is None:
                if await self._finished(job_id, fence):
                    return  # our own final write ended the lease: nothing was lost
                log.warning("job.lease_lost", job_id=job_id, fence=fence, owner=self.owner)
                on_lost()
                return


def _stop_if_cancelled() -> None:
    """Raise CancelledError in a task that was cancelled but never received
    it. Python 3.11's asyncio.wait_for, with which psycopg_pool waits for a
    free connection, returns the connection and drops the cancel when both
    arrive together (fixed in 3.12): a renewer cancelled at that moment would
    renew forever, and the `await` on it at the end of a stage call with it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def listen(
    conninfo: str, channels: tuple[str, ...], on_notify: Callable[[str, str], None]
) -> None:
    """LISTEN on `channels` over a connection of its own and call
    `on_notify(channel, payload)` for each notification, until cancelled."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(f"LISTEN {channel}")
        async for notify in conn.notifies():
            on_notify(notify.channel, notify.payload)


async def _scalar(conn: psycopg.AsyncConnection, sql: str) -> int:
    row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    return int(row[0])
