"""The artist's loop through real processes: the stage cache and RerunJob.

Stage calls are counted on the stage side, from each stage's "run.done" log
lines. Each test runs once per job store (the `orchestrator` fixture): the
cache entries and versions live in the job database.
"""

from __future__ import annotations

import asyncio

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import ObjectStore
from stageflow.v1 import orchestrator_pb2 as pb
from tests.integration.conftest import log_events

STAGES = ("base", "refine", "upscale")
# A bundle no other test submits, so the first job here is never a cache hit.
JOB = {
    "base": "a red circle on a blue background",
    "style": "stage cache test",
    "seed": 1234,
    "width": 32,
    "height": 32,
}
WAIT = 300  # seconds; three stages on the fixtures take a few


def stage_calls(cluster: LocalCluster, job_id: str | None = None) -> dict[str, int]:
    """Finished stage calls per stage (of one job when given)."""
    return {
        stage: sum(
            1
            for event in log_events(cluster, stage)
            if event.get("event") == "run.done" and job_id in (None, event.get("job_id"))
        )
        for stage in STAGES
    }


async def finish(client: StageflowClient, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        events = [event async for event in client.watch(job_id)]
    job = events[-1].finished
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    return job


async def test_resubmission_is_cached_and_rerun_recomputes_from_refine(
    local_cluster: LocalCluster, local_store: ObjectStore, orchestrator: str
) -> None:
    async with StageflowClient(orchestrator) as client:
        first = await finish(client, (await client.submit(**JOB, request_id="cache-1")).job_id)  # type: ignore[arg-type]
        assert stage_calls(local_cluster, first.job_id) == {s: 1 for s in STAGES}
        assert not any(run.cache_hit for run in first.stages)

        # Identical resubmission under another idempotency key: no stage runs.
        before = stage_calls(local_cluster)
        second = await finish(client, (await client.submit(**JOB, request_id="cache-2")).job_id)  # type: ignore[arg-type]
        assert second.job_id != first.job_id
        assert stage_calls(local_cluster) == before
        assert [run.cache_hit for run in second.stages] == [True, True, True]
        assert second.final.sha256 == first.final.sha256
        assert second.final.key == first.final.key

        # Rerun from refine with a new guidance: base is reused, the rest recomputed.
        rerun = await client.rerun(first.job_id, "refine", refine_options={"guidance_scale": 9.0})
        assert (rerun.job_id, rerun.version) == (first.job_id, 2)
        v2 = await finish(client, first.job_id)
        assert stage_calls(local_cluster, first.job_id) == {"base": 1, "refine": 2, "upscale": 2}
        assert v2.version == 2 and v2.rerun_from == "refine"
        assert v2.stages[0].output == first.stages[0].output
        assert v2.stages[1].request.refine.guidance_scale == 9.0
        assert v2.final.sha256 != first.final.sha256

        versions = await client.versions(first.job_id)
        assert [v.version for v in versions] == [1, 2]
        assert versions[0].final == first.final
        assert list(versions[0].stages) == list(first.stages)
    # Version 1's final image is still there, intact.
    get_artifact(local_store, first.final.key, first.final.sha256, field="final")


async def test_a_corrupt_artifact_is_repaired_by_the_identical_job(
    local_cluster: LocalCluster, local_store: ObjectStore, orchestrator: str
) -> None:
    """Junk written over a stored stage output: the identical job does not trust
    it (its cache entry fails to verify, the stage runs again and its write
    replaces the junk), and a rerun that reads it then works."""
    bundle = {**JOB, "style": "repair test", "seed": 4321}
    async with StageflowClient(orchestrator) as client:
        first = await finish(client, (await client.submit(**bundle, request_id="repair-1")).job_id)  # type: ignore[arg-type]
        base_out = first.stages[0].output
        local_store.put(base_out.key, b"junk, not the image")

        second = await finish(client, (await client.submit(**bundle, request_id="repair-2")).job_id)  # type: ignore[arg-type]
        assert [run.cache_hit for run in second.stages] == [False, True, True]
        assert stage_calls(local_cluster, second.job_id) == {"base": 1, "refine": 0, "upscale": 0}
        assert second.stages[0].output == base_out
        assert second.final == first.final
        # Repaired in place: the key holds its bytes again.
        get_artifact(local_store, base_out.key, base_out.sha256, field="base output")

        # Refine reads the repaired base output.
        await client.rerun(second.job_id, "refine", refine_options={"guidance_scale": 9.0})
        rerun = await finish(client, second.job_id)
        assert rerun.version == 2 and rerun.stages[0].output == base_out
        assert stage_calls(local_cluster, second.job_id) == {"base": 1, "refine": 1, "upscale": 1}
