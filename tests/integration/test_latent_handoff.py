"""Latent hand-off through real processes (three stages, the orchestrator, S3):
the base's latents travel as a content-addressed safetensors object and the
refine stage resumes them, equal to diffusers' StableDiffusionPipeline split
the same way in this process (tests/handoff_reference.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.artifacts import get_artifact
from stageflow.inference.fixtures import SD_FOLDER
from stageflow.v1 import orchestrator_pb2 as pb
from tests.handoff_reference import sd_base_latents, sd_pipeline, sd_resumed_image
from tests.integration.conftest import S3_BUCKET
from tests.s3server import S3ServerInfo

STEPS, GUIDANCE, SIZE, SPLIT, SEED = 10, 7.5, 64, 0.8, 5
BASE = "a red circle on a blue background"


@pytest.fixture(scope="module")
def reference(fixture_models: Path) -> tuple[np.ndarray, np.ndarray]:
    """(base latents, refined image in [0, 1]) from diffusers, on one thread as
    the cluster's stages run."""
    import torch

    torch.set_num_threads(1)
    pipe = sd_pipeline(fixture_models / SD_FOLDER)
    prompt = f"{BASE}."  # the orchestrator's composed prompt (no style, no text)
    latents = sd_base_latents(
        pipe, prompt, seed=SEED, steps=STEPS, guidance=GUIDANCE, size=SIZE, end=SPLIT
    )
    image = sd_resumed_image(pipe, prompt, latents, steps=STEPS, guidance=GUIDANCE, start=SPLIT)
    return latents.numpy(), image


async def test_latent_handoff_job_equals_diffusers(
    s3_cluster: LocalCluster, s3_server: S3ServerInfo, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    from safetensors.numpy import load

    async with StageflowClient(s3_cluster.orchestrator_address) as client:
        submitted = await client.submit(
            base=BASE,
            seed=SEED,
            width=SIZE,
            height=SIZE,
            pipeline="latent-handoff",
            base_options={"steps": STEPS},
            refine_options={"steps": STEPS},
        )
        async with asyncio.timeout(300):
            events = [event async for event in client.watch(submitted.job_id)]
    job = events[-1].finished
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    base, refine, upscale = job.stages
    store = s3_server.store(S3_BUCKET)

    # The base wrote latents, not a PNG: a safetensors object named by its digest.
    assert base.output.media_type == "application/x-safetensors"
    assert base.output.key.endswith(f"{base.output.sha256}.safetensors")
    assert base.total_steps == 8  # 901..201 of a 10-step schedule: 80%
    tensors = load(get_artifact(store, base.output.key, base.output.sha256))
    assert tensors["latents"].dtype == np.float32 and tensors["latents"].shape == (1, 4, 8, 8)
    np.testing.assert_array_equal(tensors["latents"], reference[0])

    # The refine stage read them as its latents input and resumed at 0.8.
    assert refine.request.latents.key == base.output.key
    assert not refine.request.HasField("image")
    assert refine.request.refine.denoising_start == pytest.approx(SPLIT)
    assert refine.total_steps == 2
    png = get_artifact(store, refine.output.key, refine.output.sha256)
    from io import BytesIO

    from PIL import Image

    ours = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)
    # Same arithmetic in the same order on one thread: equal after 8-bit
    # rounding, up to one level where a value sits on a .5 boundary.
    assert np.abs(ours - (reference[1] * 255).round()).max() <= 1
    # Then an ordinary image hand-off to the upscaler.
    assert upscale.request.image.key == refine.output.key
    assert job.final == upscale.output and job.width == SIZE
