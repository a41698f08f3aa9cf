"""Dynamic batching in real base, refine and upscale stages: two concurrent compatible
calls run as one batch (the stage's batch-size histogram says so) and each
output equals the same call run alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stageflow.cli.loadgen import seed_input
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import open_store
from stageflow.serving.channels import client_channel
from stageflow.serving.metrics import metrics_port_file
from stageflow.serving.processes import ServerProcess
from stageflow.stage.images import decode_image
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
# A batched call may differ from its lone run only by float summation order.
BATCH_MAX_LEVELS = 2


@contextlib.contextmanager
def batching_stage(tmp_path: Path, service: str, model: Path) -> Iterator[tuple[str, Path, Path]]:
    """A stage batching up to 4 calls within 500 ms: (address, port file, store)."""
    port_file, log_path, store = tmp_path / "port", tmp_path / "stage.log", tmp_path / "store"
    argv = [sys.executable, "-m", service, "--port", "0", "--port-file", str(port_file)]
    argv += ["--store-url", store.as_uri(), "--torch-threads", "1"]
    argv += ["--model-path", str(model), "--max-concurrency", "1"]
    # A generous delay: each concurrent call opens its own channel first.
    argv += ["--max-batch-size", "4", "--max-queue-delay-ms", "500"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with ServerProcess(service, argv, log=log_path, port_file=port_file, env=env) as stage:
        yield stage.address, port_file, store


@pytest.fixture
def batching_base(tmp_path: Path, fixture_models: Path) -> Iterator[tuple[str, Path, Path]]:
    with batching_stage(tmp_path, "stageflow.services.base", fixture_models / "tiny-sd") as stage:
        yield stage


@pytest.fixture
def batching_refine(tmp_path: Path, fixture_models: Path) -> Iterator[tuple[str, Path, Path]]:
    with batching_stage(tmp_path, "stageflow.services.refine", fixture_models / "tiny-sd") as stage:
        yield stage


@pytest.fixture
def batching_upscale(tmp_path: Path, fixture_models: Path) -> Iterator[tuple[str, Path, Path]]:
    with batching_stage(
        tmp_path, "stageflow.services.upscale", fixture_models / "tiny-esrgan-x4"
    ) as stage:
        yield stage


def batch_histogram(port_file: Path, stage: str = "base") -> tuple[float, float]:
    """(sum, count) of the stage's stageflow_stage_batch_size."""
    metrics_file = metrics_port_file(port_file, None)
    assert metrics_file is not None
    url = f"http://127.0.0.1:{int(metrics_file.read_text())}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("stage") == stage
    }
    return values["stageflow_stage_batch_size_sum"], values["stageflow_stage_batch_size_count"]


async def run(address: str, store: Path, prompt: str, seed: int) -> tuple[np.ndarray, int]:
    """(the output image, progress events seen) of a txt2img call"""
    request = stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(prompt=prompt, seed=seed, width=64, height=64, steps=3)
    )
    return await run_request(address, store, request)


async def run_request(
    address: str, store: Path, request: stage_pb2.RunRequest
) -> tuple[np.ndarray, int]:
    async with client_channel(address) as channel:
        events = [
            e async for e in stage_pb2_grpc.StageServiceStub(channel).Run(request, timeout=60)
        ]
    result = events[-1].result
    data = get_artifact(open_store(store.as_uri()), result.output.key, result.output.sha256)
    image = np.asarray(decode_image(data, field="output")).astype(np.int16)
    return image, sum(e.HasField("progress") for e in events)


async def test_two_concurrent_calls_run_as_one_batch_with_their_lone_outputs(
    batching_base: tuple[str, Path, Path],
) -> None:
    address, port_file, store = batching_base
    calls = [("a red circle", 5), ("a blue square", 6)]
    alone = [await run(address, store, prompt, seed) for prompt, seed in calls]
    before = batch_histogram(port_file)
    assert before == (2.0, 2.0)  # each lone call ran as a batch of one

    together = await asyncio.gather(*(run(address, store, p, s) for p, s in calls))

    total, count = batch_histogram(port_file)
    assert (total - before[0], count - before[1]) == (2.0, 1.0)  # one batch of two
    for (single, _), (batched, progress) in zip(alone, together, strict=True):
        assert progress == 3  # each call streams its own progress
        assert np.abs(batched - single).max() <= BATCH_MAX_LEVELS
    assert np.abs(together[0][0] - together[1][0]).mean() > 1  # not one image twice


def seeded_image(store: Path, width: int, height: int, seed: int) -> common_pb2.ArtifactRef:
    ref = seed_input(open_store(store.as_uri()), width, height, seed=seed)
    return common_pb2.ArtifactRef(key=ref.key, sha256=ref.sha256)


async def assert_one_batch_of_two(
    address: str, port_file: Path, store: Path, stage: str, requests: list[stage_pb2.RunRequest]
) -> None:
    alone = [await run_request(address, store, r) for r in requests]
    before = batch_histogram(port_file, stage)

    together = await asyncio.gather(*(run_request(address, store, r) for r in requests))

    total, count = batch_histogram(port_file, stage)
    assert (total - before[0], count - before[1]) == (2.0, 1.0)  # one batch of two
    for (single, _), (batched, progress) in zip(alone, together, strict=True):
        assert batched.shape == single.shape
        assert np.abs(batched - single).max() <= BATCH_MAX_LEVELS
        assert progress > 0


async def test_two_concurrent_img2img_calls_run_as_one_batch(
    batching_refine: tuple[str, Path, Path],
) -> None:
    address, port_file, store = batching_refine
    requests = [
        stage_pb2.RunRequest(
            image=seeded_image(store, 64, 64, seed),
            refine=stage_pb2.RefineParams(prompt=prompt, seed=seed, steps=4, strength=0.5),
        )
        for seed, prompt in enumerate(["a red circle", "a blue square"])
    ]
    await assert_one_batch_of_two(address, port_file, store, "refine", requests)


async def test_two_concurrent_upscales_batch_their_tiles_with_their_lone_outputs(
    batching_upscale: tuple[str, Path, Path],
) -> None:
    address, port_file, store = batching_upscale
    params = stage_pb2.UpscaleParams(tile_size=32, tile_overlap=8)
    requests = [
        stage_pb2.RunRequest(image=seeded_image(store, width, height, seed), upscale=params)
        for seed, (width, height) in enumerate([(48, 40), (40, 40)])
    ]
    await assert_one_batch_of_two(address, port_file, store, "upscale", requests)
