"""Per-tenant quotas in the job layer: parsing, the submit check, and a runner
whose tenants are limited in queued jobs, submissions per minute and running jobs."""

from __future__ import annotations

import asyncio

import pytest

from stageflow.core.errors import InvalidArgument, ResourceExhausted
from stageflow.orchestrator.bundle import DEFAULT_PIPELINE
from stageflow.orchestrator.quotas import Quota, TenantUsage, check_submit, parse_quota
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import orchestrator_pb2 as S
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore

WAIT = 5.0


def test_parse() -> None:
    assert parse_quota("running=2, queued=10,per_minute=30") == Quota(2, 10, 30)
    assert parse_quota("") == Quota()
    assert parse_quota("per_minute=5").text() == "per_minute=5"
    for bad in ("running", "speed=3", "queued=x", "running=0"):
        with pytest.raises(InvalidArgument) as err:
            parse_quota(bad, "--quota")
        assert err.value.field == "--quota"


def test_per_minute_says_when_the_oldest_leaves_the_window() -> None:
    usage = TenantUsage(queued=0, running=0, recent=(100.0, 110.0, 130.0))
    check_submit(Quota(per_minute=4), usage, now=140.0)
    with pytest.raises(ResourceExhausted) as err:
        check_submit(Quota(per_minute=3), usage, now=140.0)
    assert err.value.retry_after_seconds == 20  # 100 + 60 - 140
    check_submit(Quota(per_minute=3), usage, now=160.5)  # 100 has left the window
    with pytest.raises(ResourceExhausted, match="queued") as full:
        check_submit(Quota(max_queued=2), TenantUsage(2, 5, ()), now=0)
    assert full.value.retry_after_seconds is not None


def _request(seed: int) -> S.SubmitJobRequest:
    return S.SubmitJobRequest(
        bundle=S.PromptBundle(base="a circle"), seed=seed, width=64, height=64
    )


async def test_a_tenants_limits_hold_and_others_are_untouched(jobs: JobStore) -> None:
    base = FakeStage("base", block_at=1)
    fakes = {name: FakeStage(name) for name in DEFAULT_PIPELINE} | {"base": base}
    runner = JobRunner(fakes, jobs, FakeSettings(max_running_jobs=8), FakeStore())
    try:
        await jobs.set_quota("acme", Quota(max_running=1, max_queued=2, per_minute=10))
        first = await runner.submit(_request(1), "acme")
        async with asyncio.timeout(WAIT):
            await base.entered.wait()  # acme's one running slot is taken
        queued = [await runner.submit(_request(i), "acme") for i in (2, 3)]
        await asyncio.sleep(0.05)
        for job in queued:  # past the running limit: they wait QUEUED
            assert (await runner.get(job.job_id)).state == S.JOB_STATE_QUEUED
        with pytest.raises(ResourceExhausted, match="at most 2 queued") as err:
            await runner.submit(_request(4), "acme")
        assert err.value.retry_after_seconds
        other = await runner.submit(_request(5), "globex")  # no quota of its own
        assert other.tenant == "globex"
        base.release.set()
        async with asyncio.timeout(WAIT):
            for job in (first, *queued, other):
                async for event in runner.watch(job.job_id):
                    if event.WhichOneof("event") == "finished":
                        assert event.finished.state == S.JOB_STATE_SUCCEEDED

        await jobs.set_quota("acme", Quota(per_minute=4))  # 3 accepted so far this minute
        await runner.submit(_request(6), "acme")
        with pytest.raises(ResourceExhausted, match="per minute") as rate:
            await runner.submit(_request(7), "acme")
        assert 1 <= (rate.value.retry_after_seconds or 0) <= 60
    finally:
        await runner.close()
