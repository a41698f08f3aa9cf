"""Two replicas of the base stage, one SIGKILLed while a batch runs: every job
still completes, with the same bytes as an undisturbed run of the same batch.

The test starts its own two base replicas and its own orchestrator (pointing at
both, `--stages base=a,b;...`, stage cache off so every job really calls the
stages); refine and upscale are the session cluster's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.serving.processes import ServerProcess, wait_ready
from stageflow.v1 import orchestrator_pb2 as pb

JOBS = 8
WAIT = 300  # seconds; the whole batch takes well under a minute here
JOB = {"base": "two replicas", "style": "failover test", "width": 32, "height": 32}
OPTIONS = {"base_options": {"steps": 60}, "refine_options": {"steps": 4}}


def start(name: str, argv: Sequence[str], folder: Path) -> ServerProcess:
    """A child process on port 0 that reports its port through a file."""
    port_file = folder / f"{name}.port"
    argv = [sys.executable, *argv, "--port", "0", "--port-file", str(port_file)]
    return ServerProcess(name, argv, log=folder / f"{name}.log", port_file=port_file).start()


@pytest.fixture
async def processes() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in reversed(started):
        await asyncio.to_thread(process.stop)


async def _run_batch(client: StageflowClient, tag: str) -> list[str]:
    return [
        (await client.submit(**JOB, **OPTIONS, seed=seed, request_id=f"{tag}-{seed}")).job_id  # type: ignore[arg-type]
        for seed in range(JOBS)
    ]


async def _finish(client: StageflowClient, job_ids: Sequence[str]) -> list[pb.Job]:
    async def one(job_id: str) -> pb.Job:
        events = [event async for event in client.watch(job_id)]
        return events[-1].finished

    async with asyncio.timeout(WAIT):
        return list(await asyncio.gather(*map(one, job_ids)))


async def test_a_replica_killed_mid_batch_loses_no_job_and_changes_no_byte(
    local_cluster: LocalCluster,
    fixture_models: Path,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    store = local_cluster.store_url
    for name in ("base-a", "base-b"):
        processes.append(
            start(
                name,
                ["-m", "stageflow.services.base", "--model-path", str(fixture_models / "tiny-sd"),
                 "--torch-threads", "1", "--store-url", store, "--log-json", "true"],
                tmp_path,
            )
        )  # fmt: skip
    await asyncio.to_thread(wait_ready, processes)
    replica_a, replica_b = processes
    addresses = local_cluster.addresses
    orchestrator = start(
        "orchestrator",
        ["-m", "stageflow.orchestrator", "--store-url", store,
         "--db-path", str(tmp_path / "jobs.sqlite"),
         "--stages", f"base={replica_a.address},{replica_b.address};"
                     f"refine={addresses['refine']};upscale={addresses['upscale']}",
         "--stage-cache", "false", "--retry-base-seconds", "0.05", "--log-json", "true"],
        tmp_path,
    )  # fmt: skip
    processes.append(orchestrator)
    await asyncio.to_thread(orchestrator.wait_ready)

    async with StageflowClient(orchestrator.address) as client:
        undisturbed = await _finish(client, await _run_batch(client, "calm"))
        assert all(job.state == pb.JOB_STATE_SUCCEEDED for job in undisturbed)

        job_ids = await _run_batch(client, "storm")
        # Kill replica A once base calls are running: the orchestrator spreads
        # the batch's concurrent calls over both replicas, so A has one in flight.
        async with asyncio.timeout(WAIT):
            async for event in client.watch(job_ids[0]):
                if event.HasField("stage_progress") and event.stage_progress.stage == "base":
                    break
        os.kill(replica_a.popen.pid, signal.SIGKILL)
        replica_a.popen.wait()
        disturbed = await _finish(client, job_ids)

    assert [job.state for job in disturbed] == [pb.JOB_STATE_SUCCEEDED] * JOBS, [
        job.error for job in disturbed
    ]
    assert [job.final.sha256 for job in disturbed] == [job.final.sha256 for job in undisturbed]
    # The kill cost at least one base call its replica; it was made again elsewhere.
    retried = [job.stages[0].attempts for job in disturbed if job.stages[0].attempts > 1]
    assert retried, [job.stages[0].attempts for job in disturbed]
    assert all(job.stages[0].route == "primary" for job in disturbed)
