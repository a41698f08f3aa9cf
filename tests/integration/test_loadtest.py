"""`stageflow loadtest` against real stage processes: its counts agree with the
stage's own, and overload is counted by status code.

The stage's own count is its Prometheus request counter by status code
(scraped before and after), and its "run.done" log lines for the load test's
job id: both must agree with what the load tester reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.cli.loadgen import LoadConfig, run_load, seed_input
from stageflow.core.storage import ObjectStore
from stageflow.serving.processes import ServerProcess
from tests.integration.conftest import Samples, log_events, sample, scrape_metrics

SIZE = {"width": 64, "height": 64}
RUN = "/stageflow.v1.StageService/Run"
REPO = Path(__file__).resolve().parents[2]


def runs_done(events: list[dict[str, object]], job_id: str) -> int:
    return sum(1 for e in events if e.get("event") == "run.done" and e.get("job_id") == job_id)


async def settle(count: Callable[[], int], expected: int) -> int:
    """The stage's count once its log file has caught up with what it answered."""
    deadline = time.monotonic() + 10
    while (seen := count()) != expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # another process writes the log: nothing to await
    return seen


def counted(before: Samples, after: Samples, service: str, code: str) -> float:
    """Calls of Run the stage itself counted with `code` between two scrapes."""
    labels = {"service": service, "method": RUN, "code": code}
    return sample(after, "stageflow_rpc_requests_total", **labels) - sample(
        before, "stageflow_rpc_requests_total", **labels
    )


def assert_ordered(report: dict[str, object]) -> None:
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


async def test_request_count_matches_the_stage_and_percentiles_are_ordered(
    local_cluster: LocalCluster,
) -> None:
    job_id = f"lt-{uuid.uuid4().hex[:8]}"
    config = LoadConfig(
        address=local_cluster.addresses["base"],
        kind="txt2img",
        params={**SIZE, "steps": 2},
        concurrency=2,
        duration_s=2.0,
        job_id=job_id,
    )
    before = scrape_metrics(local_cluster.port_file("base"))
    report = await asyncio.to_thread(run_load, config)
    after = scrape_metrics(local_cluster.port_file("base"))

    assert report["errors"] == {}
    assert report["ok"] == report["requests"] > 0
    assert counted(before, after, "base", "OK") == report["ok"]
    seen = await settle(lambda: runs_done(log_events(local_cluster, "base"), job_id), report["ok"])
    assert seen == report["ok"]
    assert_ordered(report)
    assert report["throughput_rps"] > 0
    split = report["server_ms"]
    assert set(split) == {"queue_ms", "load_inputs_ms", "compute_ms", "store_output_ms", "total_ms"}
    assert split["compute_ms"]["median"] <= split["total_ms"]["median"]


async def test_upscale_from_two_processes_reuses_one_seeded_input(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    image = seed_input(local_store, 16, 16)
    job_id = f"lt-{uuid.uuid4().hex[:8]}"
    config = LoadConfig(
        address=local_cluster.addresses["upscale"],
        kind="upscale",
        image=image,
        concurrency=2,
        processes=2,
        duration_s=None,
        requests=6,
        job_id=job_id,
    )
    report = await asyncio.to_thread(run_load, config)

    assert report["client"]["processes"] == 2
    assert (report["ok"], report["errors"]) == (6, {})
    assert await settle(lambda: runs_done(log_events(local_cluster, "upscale"), job_id), 6) == 6
    assert seed_input(local_store, 16, 16) == image, "the same input, not one per run"


@pytest.fixture
def tight_base(tmp_path: Path, fixture_models: Path) -> Iterator[tuple[str, Path, Path]]:
    """A base stage that runs one call at a time and queues none: (address, log, port file)."""
    port_file, log_path = tmp_path / "port", tmp_path / "base.log"
    argv = [
        sys.executable,
        "-m",
        "stageflow.services.base",
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    argv += ["--store-url", (tmp_path / "store").as_uri(), "--log-json", "true"]
    argv += ["--model-path", str(fixture_models / "tiny-sd"), "--torch-threads", "1"]
    argv += ["--max-concurrency", "1", "--max-queue", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with ServerProcess("base", argv, log=log_path, port_file=port_file, env=env) as base:
        yield base.address, log_path, port_file


def _log(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


async def test_overload_is_counted_as_resource_exhausted(
    tight_base: tuple[str, Path, Path],
) -> None:
    address, log_path, port_file = tight_base
    job_id = f"lt-{uuid.uuid4().hex[:8]}"
    config = LoadConfig(
        address=address,
        kind="txt2img",
        params={**SIZE, "steps": 10},
        concurrency=4,
        duration_s=None,
        requests=40,
        job_id=job_id,
    )
    before = scrape_metrics(port_file)
    report = await asyncio.to_thread(run_load, config)
    after = scrape_metrics(port_file)

    assert report["requests"] == 40
    assert set(report["errors"]) == {"RESOURCE_EXHAUSTED"}
    assert report["errors"]["RESOURCE_EXHAUSTED"] > 0
    assert counted(before, after, "base", "OK") == report["ok"]
    assert (
        counted(before, after, "base", "RESOURCE_EXHAUSTED")
        == (report["errors"]["RESOURCE_EXHAUSTED"])
    )
    assert report["ok"] + report["errors"]["RESOURCE_EXHAUSTED"] == 40
    assert await settle(lambda: runs_done(_log(log_path), job_id), report["ok"]) == report["ok"]
    assert_ordered(report)


async def test_orchestrator_jobs_report_the_summed_stage_split(
    local_cluster: LocalCluster,
) -> None:
    config = LoadConfig(
        address=local_cluster.orchestrator_address,
        kind="orchestrator",
        params={**SIZE, "base.steps": 2, "refine.steps": 4},
        concurrency=2,
        duration_s=None,
        requests=3,
    )
    report = await asyncio.to_thread(run_load, config)

    assert (report["ok"], report["errors"]) == (3, {}), report["error_details"]
    assert_ordered(report)
    split = report["server_ms"]
    # Three stages ran per job: their summed compute is within the job's latency.
    assert 0 < split["compute_ms"]["median"] <= report["latency_ms"]["max"]
