"""ListJobs' paging and text filter (orchestrator/listing.py, JobRunner.list_page)
over the in-memory store; the stores' keyset paging itself is in the
JobStore contract (test_jobs.py)."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stageflow.core import limits
from stageflow.core.errors import InvalidArgument
from stageflow.orchestrator import listing
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.store import new_job_id
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, MemoryJobStore


def _job(created_us: int, prompt: str, tenant: str = "acme", text: str = "") -> pb.Job:
    ts = Timestamp()
    ts.FromMicroseconds(created_us)
    return pb.Job(
        job_id=new_job_id(),
        state=pb.JOB_STATE_SUCCEEDED,
        prompt=prompt,
        bundle=pb.PromptBundle(base=prompt, overlay_text=text),
        created_at=ts,
        updated_at=ts,
        tenant=tenant,
    )


@pytest.fixture
async def runner() -> tuple[JobRunner, MemoryJobStore]:
    store = MemoryJobStore()
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    return JobRunner(fakes, store, FakeSettings()), store


async def _all_pages(
    runner: JobRunner, page_size: int, query: str = "", tenant: str = "acme"
) -> tuple[list[list[str]], list[str]]:
    pages, tokens, token = [], [], ""
    while True:
        jobs, token = await runner.list_page(
            page_size, tenant=tenant, page_token=token, query=query
        )
        pages.append([j.prompt for j in jobs])
        tokens.append(token)
        if not token:
            return pages, tokens


async def test_pages_cover_every_job_once_newest_first(
    runner: tuple[JobRunner, MemoryJobStore],
) -> None:
    jobs_runner, store = runner
    for i in range(7):
        await store.create(_job(1_000 + i, f"job {i}"))
    await store.create(_job(5_000, "another tenant's", tenant="globex"))
    pages, tokens = await _all_pages(jobs_runner, 3)
    assert pages == [["job 6", "job 5", "job 4"], ["job 3", "job 2", "job 1"], ["job 0"]]
    assert tokens[-1] == "" and all(tokens[:-1])
    # A full last page says so: no token to an empty page.
    pages, _ = await _all_pages(jobs_runner, 7)
    assert pages == [[f"job {i}" for i in range(6, -1, -1)]]


async def test_the_query_matches_prompt_or_overlay_text_ignoring_case(
    runner: tuple[JobRunner, MemoryJobStore],
) -> None:
    jobs_runner, store = runner
    for i, (prompt, text) in enumerate(
        [("a Red circle", ""), ("a blue square", "RED sale"), ("a green star", ""), ("red", "")]
    ):
        await store.create(_job(1_000 + i, prompt, text=text))
    pages, _ = await _all_pages(jobs_runner, 10, query="  red ")
    assert pages == [["red", "a blue square", "a Red circle"]]
    pages, _ = await _all_pages(jobs_runner, 1, query="red")
    assert pages == [["red"], ["a blue square"], ["a Red circle"]]
    assert await _all_pages(jobs_runner, 10, query="violet") == ([[]], [""])


async def test_a_rare_match_is_found_over_several_bounded_pages(
    runner: tuple[JobRunner, MemoryJobStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listing, "MAX_SCANNED", 5)
    monkeypatch.setattr(listing, "SCAN_BATCH", 2)
    jobs_runner, store = runner
    await store.create(_job(1, "the needle"))
    for i in range(12):
        await store.create(_job(10 + i, f"hay {i}"))
    pages, tokens = await _all_pages(jobs_runner, 10, query="needle")
    # 13 jobs at most 5 a call: two empty pages with a token, then the match.
    assert pages == [[], [], ["the needle"]]
    assert all(tokens[:-1]) and tokens[-1] == ""


@pytest.mark.parametrize("token", ["x", "djEuMS4y!", listing.encode_token((1, 2))[:-2], "dj"])
async def test_a_malformed_token_names_page_token(
    runner: tuple[JobRunner, MemoryJobStore], token: str
) -> None:
    jobs_runner, _ = runner
    with pytest.raises(InvalidArgument) as err:
        await jobs_runner.list_page(10, page_token=token)
    assert err.value.field == "page_token"


async def test_an_overlong_query_is_refused_naming_query_and_the_limit(
    runner: tuple[JobRunner, MemoryJobStore],
) -> None:
    jobs_runner, _ = runner
    assert await jobs_runner.list_page(10, query="q" * limits.MAX_QUERY_CHARS) == ([], "")
    with pytest.raises(InvalidArgument) as err:
        await jobs_runner.list_page(10, query="q" * (limits.MAX_QUERY_CHARS + 1))
    assert err.value.field == "query"
    assert f"at most {limits.MAX_QUERY_CHARS} characters" in str(err.value)


def test_a_token_round_trips_its_cursor() -> None:
    cursor = (1_800_000_000_000_000, 42)
    assert listing.decode_token(listing.encode_token(cursor)) == cursor
    assert listing.decode_token("") is None
