"""A real base stage serving from a model repository swaps versions without a
restart: calls keep succeeding across the switch, a broken version fails to
load and the old one keeps serving, and `stageflow models load` drives it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from stageflow.cli.cluster import LocalCluster
from stageflow.cli.main import app
from stageflow.inference.fixtures import SD_FOLDER, build_fixtures
from stageflow.inference.repository import ModelRepository
from stageflow.serving.channels import client_channel
from stageflow.serving.processes import ServerProcess
from stageflow.v1 import stage_pb2, stage_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0
UNET = "unet/diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class Stage:
    address: str
    repository: ModelRepository
    log: Path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, fixture_models: Path) -> ModelRepository:
    """tiny-sd@1 and @2 (other weights), @3 with corrupt weights behind a consistent
    model.yaml, @4 tampered with after import, and an upscaler."""
    tmp = tmp_path_factory.mktemp("hot-swap")
    repo = ModelRepository(tmp / "repo")
    repo.import_folder(fixture_models / SD_FOLDER, "tiny-sd", "1")
    other = build_fixtures(tmp / "seed1", seed=1)
    repo.import_folder(other[SD_FOLDER], "tiny-sd", "2")
    broken = tmp / "broken"
    shutil.copytree(fixture_models / SD_FOLDER, broken)
    (broken / UNET).write_bytes(b"\x00" * 1024)
    repo.import_folder(broken, "tiny-sd", "3")
    repo.import_folder(fixture_models / SD_FOLDER, "tiny-sd", "4")
    (tmp / "repo" / "tiny-sd" / "4" / UNET).write_bytes(b"tampered")
    repo.import_folder(fixture_models / "tiny-esrgan-x4", "tiny-esrgan", "1")
    return repo


@pytest.fixture(scope="module")
def stage(repository: ModelRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("base-stage")
    port_file, log = tmp / "port", tmp / "base.log"
    argv = [
        sys.executable, "-m", "stageflow.services.base",
        "--model-repository", repository.root, "--model", "tiny-sd@1",
        "--port", "0", "--port-file", str(port_file), "--store-url", str(tmp / "store"),
        "--torch-threads", "1", "--max-queue", "64", "--log-json", "true",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with ServerProcess("base", argv, log=log, port_file=port_file, env=env) as base:
        yield Stage(base.address, repository, log)


def txt2img(seed: int = 0) -> stage_pb2.RunRequest:
    return stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(
            prompt="a red circle", width=32, height=32, steps=2, seed=seed
        )
    )


async def run(address: str, seed: int = 0) -> stage_pb2.StageResult:
    async with client_channel(address) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        events = [e async for e in stub.Run(txt2img(seed), timeout=TIMEOUT)]
    return events[-1].result


async def load(address: str, model: str) -> stage_pb2.LoadModelResponse:
    async with client_channel(address) as channel:
        stub = stage_pb2_grpc.StageAdminServiceStub(channel)
        reply: stage_pb2.LoadModelResponse = await stub.LoadModel(
            stage_pb2.LoadModelRequest(model=model), timeout=120
        )
        return reply


async def describe(address: str) -> stage_pb2.DescribeResponse:
    async with client_channel(address) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        reply: stage_pb2.DescribeResponse = await stub.Describe(stage_pb2.DescribeRequest())
        return reply


async def test_swap_under_load_keeps_every_call_succeeding(stage: Stage) -> None:
    await load(stage.address, "tiny-sd@1")
    v2 = stage.repository.get("tiny-sd", "2")
    switched_at: list[float] = []
    results: list[tuple[float, stage_pb2.StageResult]] = []  # (call start, result)
    three_done = asyncio.Event()

    async def loop(worker: int) -> None:
        # Each loop keeps calling until it has two results that began after the switch.
        after = 0
        while after < 2:
            started = time.monotonic()
            results.append((started, await run(stage.address, seed=worker)))
            if len(results) >= 3:
                three_done.set()
            after += bool(switched_at and started > switched_at[0])

    loops = [asyncio.create_task(loop(i)) for i in range(3)]
    await asyncio.wait_for(three_done.wait(), 120)  # the stage is busy before the switch
    reply = await load(stage.address, "tiny-sd@2")
    switched_at.append(time.monotonic())
    await asyncio.wait_for(asyncio.gather(*loops), 180)  # raises if any call failed

    assert (reply.model.version, reply.model.fingerprint) == ("2", v2.fingerprint)
    after = [r for t, r in results if t > switched_at[0]]
    assert len(after) >= 6
    assert {(r.model.name, r.model.version) for r in after} == {("tiny-sd", "2")}
    assert {r.model.fingerprint for r in after} == {v2.fingerprint}
    assert {r.model.version for _, r in results[:3]} == {"1"}
    described = await describe(stage.address)
    assert (described.model.version, described.ready) == ("2", True)
    assert "model.unloaded" in stage.log.read_text()


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("tiny-sd@3", grpc.StatusCode.FAILED_PRECONDITION, "cannot load model tiny-sd@3"),
        ("tiny-sd@4", grpc.StatusCode.DATA_LOSS, f"tiny-sd@4 .*{UNET}: .*model.yaml records"),
        ("tiny-esrgan@1", grpc.StatusCode.FAILED_PRECONDITION, "serves upscale; this stage runs"),
        ("tiny-sd@9", grpc.StatusCode.NOT_FOUND, r"tiny-sd@9 not found .*versions: 1, 2, 3, 4"),
        ("tiny sd", grpc.StatusCode.INVALID_ARGUMENT, "model: must be name@version"),
    ],
)
async def test_a_failed_load_is_a_clear_error_and_the_old_model_keeps_serving(
    stage: Stage, model: str, code: grpc.StatusCode, message: str
) -> None:
    await load(stage.address, "tiny-sd@1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await load(stage.address, model)
    assert err.value.code() == code, err.value.details()
    assert re.search(message, err.value.details() or ""), err.value.details()
    result = await run(stage.address)
    assert (result.model.version, result.model.backend) == ("1", "torch")
    assert (await describe(stage.address)).model.version == "1"


def test_cli_models_load_switches_a_running_stage(stage: Stage) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["models", "load", stage.address, "tiny-sd@2"], env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert f"{stage.address} now serves tiny-sd@2 (torch, " in ok.stdout
    assert asyncio.run(run(stage.address)).model.version == "2"
    bad = runner.invoke(app, ["models", "load", stage.address, "tiny-sd@3"])
    assert bad.exit_code == 1
    assert "FAILED_PRECONDITION: cannot load model tiny-sd@3" in bad.output
    missing = runner.invoke(app, ["models", "load", stage.address, "tiny-sd@9"])
    assert missing.exit_code == 2 and "NOT_FOUND" in missing.output


def test_the_admin_service_is_listed_by_reflection(stage: Stage) -> None:
    with grpc.insecure_channel(stage.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    names = {s.name for s in reply.list_services_response.service}
    assert "stageflow.v1.StageAdminService" in names


async def test_a_stage_without_a_repository_refuses_load_model(
    local_cluster: LocalCluster,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await load(local_cluster.addresses["base"], "tiny-sd@1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--model-repository" in (err.value.details() or "")
