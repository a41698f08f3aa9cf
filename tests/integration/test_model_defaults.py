"""Who owns a default, through real processes: the job's own option, then the
pipeline spec's defaults, then the model's model.yaml, then the model class.

The base stage serves the trained `shapes-sd` fixture from a model repository:
its model.yaml, as `stageflow models import` writes it, says the model's
native size is 32 px (the class's own default is 128), and we add a steps
default of 7 there (the class's is 20). The orchestrator sends neither field
when the job leaves it unset, so the model.yaml values reach the job.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import grpc
import pytest
import yaml
from PIL import Image

from stageflow.cli.cluster import TRAINED_MODELS_DIR, LocalCluster
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import LocalStore
from stageflow.inference.interface import Txt2ImgParams
from stageflow.inference.repository import ModelRepository
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc as pb_grpc

WAIT = 300
MODEL_YAML_STEPS = 7
SPEC_STEPS = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("model-defaults")
    repo = ModelRepository(root / "repo")
    imported = repo.import_folder(TRAINED_MODELS_DIR / "shapes-sd", "shapes-sd", "1")
    assert imported.defaults["txt2img"] == {"width": 32, "height": 32}  # detected, native
    manifest = root / "repo" / "shapes-sd" / "1" / "model.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["defaults"]["txt2img"]["steps"] = MODEL_YAML_STEPS
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    pipelines = root / "pipelines"
    pipelines.mkdir()
    (pipelines / "default.yaml").write_text("stages:\n  - stage: base\n")
    (pipelines / "spec-steps.yaml").write_text(
        f"stages:\n  - stage: base\n    defaults:\n      steps: {SPEC_STEPS}\n"
    )
    with LocalCluster(
        state_dir=root / "state",
        stages=("base",),
        stage_args={"base": ["--model-repository", str(root / "repo"), "--model", "shapes-sd@1"]},
        orchestrator_args=["--pipelines-dir", str(pipelines)],
        torch_threads=1,
    ) as running:
        yield running


async def run(stub: pb_grpc.OrchestratorServiceStub, request: pb.SubmitJobRequest) -> pb.Job:
    submitted = await stub.SubmitJob(request)
    async with asyncio.timeout(WAIT):
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=submitted.job.job_id)):
            if event.HasField("finished"):
                assert event.finished.state == pb.JOB_STATE_SUCCEEDED, event.finished.error
                return event.finished
    raise AssertionError("the watch ended without the finished job")


def final_size(cluster: LocalCluster, job: pb.Job) -> tuple[int, int]:
    data = get_artifact(LocalStore(cluster.state_dir / "store"), job.final.key, job.final.sha256)
    size: tuple[int, int] = Image.open(io.BytesIO(data)).size
    return size


def job(**fields: object) -> pb.SubmitJobRequest:
    bundle = pb.PromptBundle(base="a red circle on a blue background")
    return pb.SubmitJobRequest(bundle=bundle, seed=3, **fields)  # type: ignore[arg-type]


async def test_model_yaml_defaults_reach_a_job_that_leaves_them_unset(
    cluster: LocalCluster,
) -> None:
    class_default = Txt2ImgParams(prompt="x")
    assert (class_default.width, class_default.steps) != (32, MODEL_YAML_STEPS)
    async with grpc.aio.insecure_channel(cluster.orchestrator_address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        # Known at submit already: the base stage's Describe lists its defaults.
        submitted = await stub.SubmitJob(job(request_id="no-size"))
        assert (submitted.job.width, submitted.job.height) == (32, 32)
        unset = await run(stub, job(request_id="no-size"))  # the same job, finished
        sent = unset.stages[0].request.txt2img
        assert not sent.HasField("width") and not sent.HasField("steps")
        assert final_size(cluster, unset) == (32, 32) == (unset.width, unset.height)
        assert unset.stages[0].total_steps == MODEL_YAML_STEPS

        # The spec's default wins over model.yaml's; the job's own over both.
        spec = await run(stub, job(pipeline="spec-steps", width=48, height=40))
        assert spec.stages[0].total_steps == SPEC_STEPS
        assert final_size(cluster, spec) == (48, 40) == (spec.width, spec.height)
        own = await run(stub, job(pipeline="spec-steps", base=pb.BaseOptions(steps=3)))
        assert own.stages[0].total_steps == 3
        assert final_size(cluster, own) == (32, 32)
