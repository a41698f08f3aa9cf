"""The seam between one orchestrator and several: which store makes a
replica, and what a replica's write of a job it does not hold does."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from stageflow.orchestrator.coordination import LeasedCoordinator, LeaseLost, replica_leases
from stageflow.orchestrator.directory import StageDirectory
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.v1 import orchestrator_pb2 as pb


def test_a_sqlite_store_is_one_process_and_a_pooled_store_makes_a_replica(
    tmp_path: Path,
) -> None:
    assert replica_leases(SqliteJobStore(tmp_path / "jobs.sqlite"), 10.0) is None

    class Pooled:  # the PostgreSQL store's one attribute replica_leases reads
        pool = object()

    named = replica_leases(Pooled(), 4.0, "replica-a")  # type: ignore[arg-type]
    assert named is not None and named.owner == "replica-a" and named.lease_seconds == 4.0
    first = replica_leases(Pooled(), 4.0)  # type: ignore[arg-type]
    second = replica_leases(Pooled(), 4.0)  # type: ignore[arg-type]
    assert first is not None and second is not None and first.owner != second.owner


def test_lease_length_must_be_positive() -> None:
    from stageflow.orchestrator.leases import JobLeases

    with pytest.raises(ValueError, match="lease_seconds must be > 0, got 0"):
        JobLeases(object(), "a", 0)  # type: ignore[arg-type]


async def test_a_write_of_a_job_this_replica_does_not_hold_is_refused() -> None:
    coordinator = LeasedCoordinator(object(), StageDirectory({}))  # type: ignore[arg-type]
    with pytest.raises(LeaseLost, match="job j: fence 0 is stale"):
        await coordinator.persist(pb.Job(job_id="j", state=pb.JOB_STATE_RUNNING))
    coordinator.own("j", 3)
    assert coordinator.fence("j") == 3
    coordinator.disown("j")
    assert coordinator.fence("j") is None


@pytest.mark.parametrize("renewer", ["slot", "job"])
async def test_a_renewer_whose_cancel_was_swallowed_still_stops(renewer: str) -> None:
    """Python 3.11's wait_for (psycopg_pool's wait for a free connection)
    returns the connection and drops a cancel that arrives with it: the
    renewal then returns normally, and the renewer must stop all the same
    (it once renewed forever, and the stage call awaiting it hung)."""
    from stageflow.orchestrator.leases import JobLeases

    leases = JobLeases(object(), "a", 0.03)  # type: ignore[arg-type]
    inside = asyncio.Event()
    renewals = 0

    async def renew_swallowing_the_cancel(*_: object) -> bool:
        nonlocal renewals
        renewals += 1
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # as wait_for does, its wait done
            await asyncio.sleep(0.05)
        return True

    leases.renew_slot = renew_swallowing_the_cancel  # type: ignore[method-assign,assignment]
    leases._renew = renew_swallowing_the_cancel  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(
        leases._keep_slot("upscale", 0) if renewer == "slot" else leases.keep("j", 1, lambda: None)
    )
    await inside.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:  # the failure: stop it for good, out of its renewal
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.01)
    assert done == {task} and task.cancelled()
    assert renewals == 1
