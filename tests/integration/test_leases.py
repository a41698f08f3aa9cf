"""Leases, fencing, global limits and NOTIFY over a real PostgreSQL server
(each `JobLeases` of the `replicas` fixture is one replica to the database)."""

from __future__ import annotations

import asyncio
import time

import pytest

from stageflow.orchestrator.leases import (
    CANCEL_CHANNEL,
    JOBS_CHANNEL,
    JobLeases,
    LeaseLost,
    listen,
)
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.leasedb import LEASE_SECONDS, Replicas, insert, job, replicas, stored

__all__ = ["replicas"]  # the fixture, imported


async def test_claims_take_interactive_before_bulk_then_oldest_and_never_twice(
    replicas: Replicas,
) -> None:
    a, b, c = await replicas(3)
    await insert(
        a,
        [
            job("bulk-old", 1, bulk=True),
            job("inter-new", 30),
            job("inter-old", 20),
            job("bulk-new", 40, bulk=True),
        ],
    )
    claims = [await r.claim(max_running=10) for r in (a, b, c, a)]
    assert [cl.job_id for cl in claims if cl] == ["inter-old", "inter-new", "bulk-old", "bulk-new"]
    assert await b.claim(max_running=10) is None  # every job is leased

    # Concurrent claims from three replicas: each job goes to exactly one.
    await insert(a, [job(f"j{n}", 100 + n) for n in range(12)])
    results = await asyncio.gather(*(r.claim(max_running=100) for r in (a, b, c) * 6))
    won = [cl.job_id for cl in results if cl is not None]
    assert sorted(won) == sorted(f"j{n}" for n in range(12))


async def test_queue_positions_are_1_to_n_in_claim_order_and_move_up_on_a_claim(
    replicas: Replicas,
) -> None:
    a, b = await replicas(2)
    await insert(
        a,
        [
            job("bulk-old", 1, bulk=True),
            job("inter-new", 30),
            job("inter-old", 20),
            job("bulk-new", 40, bulk=True),
        ],
    )
    order = ["inter-old", "inter-new", "bulk-old", "bulk-new"]
    assert [await b.queue_position(job_id) for job_id in order] == [1, 2, 3, 4]
    claim = await a.claim(max_running=10)
    assert claim is not None and claim.job_id == order[0]
    # Read from the other replica: the claimed job is no longer queued.
    assert [await b.queue_position(job_id) for job_id in order] == [0, 1, 2, 3]
    assert await b.queue_position("no-such-job") == 0


async def test_max_running_is_cluster_wide(replicas: Replicas) -> None:
    a, b, c = await replicas(3)
    await insert(a, [job(f"j{n}", n) for n in range(10)])
    results = await asyncio.gather(*(r.claim(max_running=4) for r in (a, b, c) * 3))
    assert sum(cl is not None for cl in results) == 4
    assert await a.running() == 4


async def test_tenant_max_running_holds_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas(2)
    await insert(a, [job(f"t{n}", n, tenant="acme") for n in range(4)], tenant_limit=1)
    await insert(a, [job("other", 99, tenant="other")])
    first = await a.claim(max_running=10)
    second = await b.claim(max_running=10)
    assert first is not None and first.job_id == "t0"
    # acme's one slot is taken: b skips its jobs and gets the other tenant's.
    assert second is not None and second.job_id == "other"
    assert await b.claim(max_running=10) is None


async def test_expired_lease_is_claimed_with_a_new_fence_and_stale_writes_are_refused(
    replicas: Replicas,
) -> None:
    paused, taker = await replicas(2)
    await insert(paused, [job("j", 1)])
    first = await paused.claim(max_running=10)
    assert first is not None
    running = await stored(paused, "j")
    running.state = pb.JOB_STATE_RUNNING
    await paused.write(running, first.fence)

    assert await taker.claim(max_running=10) is None  # the lease still holds
    await asyncio.sleep(LEASE_SECONDS + 0.3)  # the owner "paused" past its lease
    second = await taker.claim(max_running=10)
    assert second is not None and second.job_id == "j" and second.fence == first.fence + 1

    progress = await stored(taker, "j")
    progress.stages.add(stage="base", state=pb.STAGE_STATE_SUCCEEDED)
    await taker.write(progress, second.fence)

    # The paused replica wakes up and tries to write its own view: refused.
    running.error = "stale"
    with pytest.raises(LeaseLost):
        await paused.write(running, first.fence)
    assert not await paused.renew("j", first.fence)
    assert await stored(taker, "j") == progress

    progress.state = pb.JOB_STATE_SUCCEEDED
    await taker.write(progress, second.fence, final=True)
    await asyncio.sleep(LEASE_SECONDS + 0.3)
    assert await paused.claim(max_running=10) is None  # done: never claimed again


async def test_released_job_is_claimable_at_once(replicas: Replicas) -> None:
    a, b = await replicas(2)
    await insert(a, [job("j", 1)])
    claim = await a.claim(max_running=10)
    assert claim is not None
    await a.release("j", claim.fence)
    again = await b.claim(max_running=10)
    assert again is not None and again.job_id == "j" and again.fence == claim.fence + 1


async def test_renewal_keeps_the_lease_past_its_length(replicas: Replicas) -> None:
    owner, other = await replicas(2)
    await insert(owner, [job("j", 1)])
    claim = await owner.claim(max_running=10)
    assert claim is not None
    lost = asyncio.Event()
    keeper = asyncio.create_task(owner.keep("j", claim.fence, lost.set))
    try:
        await asyncio.sleep(LEASE_SECONDS * 2.5)
        assert await other.claim(max_running=10) is None
        assert not lost.is_set()
    finally:
        keeper.cancel()


async def test_stage_slots_never_exceed_their_limit_across_replicas(replicas: Replicas) -> None:
    limit = 2
    group = await replicas(3)
    in_flight = 0
    peak = 0

    async def call(leases: JobLeases) -> None:
        nonlocal in_flight, peak
        async with leases.slot("base", limit, poll_seconds=0.02):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1

    await asyncio.gather(*(call(r) for r in group * 4))
    assert peak == limit  # reached, never passed


async def test_notify_reaches_another_replica_with_the_job_id(
    replicas: Replicas, pg_url: str
) -> None:
    a, b = await replicas(2)
    await insert(a, [job("j", 1)])
    seen: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
    listener = asyncio.create_task(
        listen(
            pg_url,
            (JOBS_CHANNEL, CANCEL_CHANNEL),
            lambda ch, payload: seen.put_nowait((ch, payload, time.monotonic())),
        )
    )
    try:
        await asyncio.sleep(0.3)  # LISTEN is in place
        claim = await a.claim(max_running=10)
        assert claim is not None
        progress = await stored(a, "j")
        progress.state = pb.JOB_STATE_RUNNING
        await a.write(progress, claim.fence)
        channel, payload, _ = await asyncio.wait_for(seen.get(), 5)
        assert (channel, payload) == (JOBS_CHANNEL, "j")

        assert await b.request_cancel("j")
        assert await a.cancel_requested("j")
        channel, payload, _ = await asyncio.wait_for(seen.get(), 5)
        assert (channel, payload) == (CANCEL_CHANNEL, "j")
    finally:
        listener.cancel()


async def test_an_interactive_call_waiting_on_one_replica_goes_before_bulk_on_another(
    replicas: Replicas,
) -> None:
    holder, bulk_side, interactive_side = await replicas(3)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with holder.slot("base", 1, poll_seconds=0.02):
            await release.wait()

    async def call(leases: JobLeases, name: str, bulk: bool) -> None:
        async with leases.slot("base", 1, bulk=bulk, poll_seconds=0.02):
            order.append(name)
            await asyncio.sleep(0.05)

    holding = asyncio.create_task(hold())
    await asyncio.sleep(0.1)
    bulk = asyncio.create_task(call(bulk_side, "bulk", True))
    await asyncio.sleep(0.1)  # the bulk call waits first
    interactive = asyncio.create_task(call(interactive_side, "interactive", False))
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.gather(holding, bulk, interactive)
    assert order == ["interactive", "bulk"]
    async with holder._pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM stage_slot_waiters")).fetchone()
    assert row == (0,)  # the waiter's row is gone once it holds the slot


async def test_a_renewal_racing_the_owners_final_write_is_not_a_lost_lease(
    replicas: Replicas,
) -> None:
    """The final write ends the lease; a renewal that finds it ended by its
    own fence stops quietly instead of reporting the (finished) job lost,
    which once cancelled the job's task before it logged and published its end."""
    (owner,) = await replicas(1)
    await insert(owner, [job("j", 1)])
    claim = await owner.claim(max_running=10)
    assert claim is not None
    lost: list[str] = []
    keeper = asyncio.create_task(owner.keep("j", claim.fence, lambda: lost.append("j")))
    done = await stored(owner, "j")
    done.state = pb.JOB_STATE_SUCCEEDED
    await owner.write(done, claim.fence, final=True)
    await asyncio.wait_for(keeper, LEASE_SECONDS * 2)  # its next renewal ends it
    assert lost == []

    # A stale fence (another replica's claim since) is still a lost lease.
    await insert(owner, [job("k", 2)])
    other = await owner.claim(max_running=10)
    assert other is not None
    stale = asyncio.create_task(owner.keep("k", other.fence - 1, lambda: lost.append("k")))
    await asyncio.wait_for(stale, LEASE_SECONDS * 2)
    assert lost == ["k"]
