"""A fourth stage kind through real processes, declared only in its own package.

`tests/integration/sharpen_kind` declares `sharpen` (an unsharp mask, its
params in a dataclass of its own, no proto message). Nothing else in the tree
names it: the stage process and the orchestrator find it through the
`stageflow.kinds` entry point of a dist-info folder this test writes (what a
`pip install` of a plugin would write). Then: a job base -> sharpen whose
sharpen parameters come from the job (amount), the spec (radius) and the model
class (threshold); an identical resubmission answered by the stage cache;
and a rerun from sharpen that reuses the base output.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from PIL import Image

from stageflow import kinds
from stageflow.cli.cluster import LocalCluster
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import LocalStore
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc
from stageflow.v1 import stage_pb2, stage_pb2_grpc
from tests.integration.conftest import log_events
from tests.integration.sharpen_kind import SHARPEN
from tests.integration.sharpen_kind.model import CONFIG, SharpenParams, unsharp

REPO = Path(__file__).resolve().parents[2]
WAIT = 300
SPEC = """\
name: default
stages:
  - stage: base
  - stage: sharpen
    defaults:
      radius: 3
"""


def plugin_path(root: Path) -> Path:
    """A folder on sys.path holding a distribution whose entry point names SHARPEN."""
    dist = root / "sharpen_kind_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sharpen-kind-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[{kinds.ENTRY_POINT_GROUP}]\nsharpen = tests.integration.sharpen_kind:SHARPEN\n"
    )
    return root


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("fourth-kind")
    plugins = plugin_path(root / "plugins")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "default.yaml").write_text(SPEC)
    model = root / "unsharp-mask"
    model.mkdir()
    (model / CONFIG).write_text('{"filter": "unsharp"}\n')
    path = os.pathsep.join([str(plugins), str(REPO), os.environ.get("PYTHONPATH", "")])
    with (
        kinds.registered(SHARPEN),  # this process launches it, so it knows it too
        LocalCluster(
            state_dir=root / "state",
            models_dir=fixture_models,
            stages=("base", "sharpen"),
            stage_args={"sharpen": ["--model-path", str(model)]},
            orchestrator_args=["--pipelines-dir", str(root / "pipelines")],
            extra_env={"PYTHONPATH": path},
            torch_threads=1,
        ) as running,
    ):
        yield running


def sharpen_calls(cluster: LocalCluster) -> int:
    return sum(1 for e in log_events(cluster, "sharpen") if e.get("event") == "run.done")


def options(**values: float) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def finished(stub: pb_grpc.OrchestratorServiceStub, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            if event.HasField("finished"):
                job = event.finished
                assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
                return job
    raise AssertionError("the watch ended without the finished job")


def image(store: LocalStore, ref: object) -> Image.Image:
    data = get_artifact(store, ref.key, ref.sha256)  # type: ignore[attr-defined]
    return Image.open(io.BytesIO(data)).convert("RGB")


async def test_a_fourth_kind_runs_caches_and_reruns(cluster: LocalCluster) -> None:
    store = LocalStore(cluster.state_dir / "store")
    request = pb.SubmitJobRequest(
        bundle=pb.PromptBundle(base="a red circle on a blue background", style="fourth kind"),
        seed=5,
        width=32,
        height=32,
        request_id="sharpen-1",
        options={"sharpen": options(amount=2.0)},
    )
    async with grpc.aio.insecure_channel(cluster.addresses["sharpen"]) as channel:
        desc = await stage_pb2_grpc.StageServiceStub(channel).Describe(stage_pb2.DescribeRequest())
    assert (desc.kind, desc.model.name, desc.ready) == ("sharpen", "unsharp-mask", True)
    assert dict(desc.defaults) == {"amount": 1.0, "radius": 2.0, "threshold": 0.0}

    async with grpc.aio.insecure_channel(cluster.orchestrator_address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        first = await finished(stub, (await stub.SubmitJob(request)).job.job_id)
        assert [run.stage for run in first.stages] == ["base", "sharpen"]
        base, sharpen = first.stages
        # The job's amount, the spec's radius; threshold left to the model class.
        assert sharpen.request.generic.kind == "sharpen"
        sent = json_format.MessageToDict(sharpen.request.generic.values)
        assert sent == {"amount": 2.0, "radius": 3}
        assert sharpen.request.image == base.output
        assert sharpen.model.name == "unsharp-mask" and not sharpen.cache_hit
        expected = unsharp(image(store, base.output), SharpenParams(amount=2.0, radius=3))
        assert image(store, first.final).tobytes() == expected.tobytes()
        assert first.final.sha256 != base.output.sha256
        assert sharpen_calls(cluster) == 1

        # The same job again, under another idempotency key: the cache answers.
        request.request_id = "sharpen-2"
        second = await finished(stub, (await stub.SubmitJob(request)).job.job_id)
        assert [run.cache_hit for run in second.stages] == [True, True]
        assert second.final == first.final
        assert sharpen_calls(cluster) == 1

        # Rerun from sharpen with a lighter amount: base reused, sharpen recomputed.
        rerun = pb.RerunJobRequest(
            job_id=first.job_id, from_stage="sharpen", options={"sharpen": options(amount=0.5)}
        )
        assert (await stub.RerunJob(rerun)).job.version == 2
        v2 = await finished(stub, first.job_id)
        assert v2.rerun_from == "sharpen" and v2.stages[0].output == base.output
        assert json_format.MessageToDict(v2.stages[1].request.generic.values) == {
            "amount": 0.5,
            "radius": 3,
        }
        assert not v2.stages[1].cache_hit
        lighter = unsharp(image(store, base.output), SharpenParams(amount=0.5, radius=3))
        assert image(store, v2.final).tobytes() == lighter.tobytes()
        assert sharpen_calls(cluster) == 2

        # Its options are checked like any kind's: a bad key or value fails the submit.
        bad = pb.SubmitJobRequest()
        bad.CopyFrom(request)
        bad.request_id = "sharpen-bad"
        bad.options["sharpen"].CopyFrom(options(amount=9.0))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "options.sharpen.amount" in (err.value.details() or "")
