"""Latent hand-off through real processes (three stages, the orchestrator, S3):
the base's latents travel as a content-addressed safetensors object and the
refine stage resumes them, equal to diffusers' StableDiffusionPipeline split
the same way in this process (tests/handoff_reference.py); and the SDXL base
and refiner fixtures the same way, against diffusers' SDXL pipelines with
denoising_end / denoising_start."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import LocalStore
from stageflow.inference.fixtures import SD_FOLDER, SDXL_FOLDER, SDXL_REFINER_FOLDER
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


async def handoff_job(cluster: LocalCluster, **kwargs: object) -> pb.Job:
    """A latent-handoff job through `cluster`, finished and SUCCEEDED."""
    async with StageflowClient(cluster.orchestrator_address) as client:
        submitted = await client.submit(
            base=BASE,
            seed=SEED,
            width=SIZE,
            height=SIZE,
            pipeline="latent-handoff",
            base_options={"steps": STEPS},
            refine_options={"steps": STEPS},
            **kwargs,  # type: ignore[arg-type]
        )
        async with asyncio.timeout(300):
            events = [event async for event in client.watch(submitted.job_id)]
    job = events[-1].finished
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    return job


async def test_latent_handoff_job_equals_diffusers(
    s3_cluster: LocalCluster, s3_server: S3ServerInfo, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    job = await handoff_job(s3_cluster)
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
    ours = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)
    # Same arithmetic in the same order on one thread: equal after 8-bit
    # rounding, up to one level where a value sits on a .5 boundary.
    assert np.abs(ours - (reference[1] * 255).round()).max() <= 1
    # Then an ordinary image hand-off to the upscaler.
    assert upscale.request.image.key == refine.output.key
    assert job.final == upscale.output and job.width == SIZE


@pytest.fixture(scope="module")
def sdxl_cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    """Base on the SDXL fixture, refine on the SDXL refiner fixture."""
    with LocalCluster(
        state_dir=tmp_path_factory.mktemp("sdxl-cluster"),
        models_dir=fixture_models,
        torch_threads=1,
        stage_args={
            "base": ["--model-path", str(fixture_models / SDXL_FOLDER)],
            "refine": ["--model-path", str(fixture_models / SDXL_REFINER_FOLDER)],
        },
    ) as cluster:
        yield cluster


async def test_sdxl_base_and_refiner_hand_off_latents_as_diffusers(
    sdxl_cluster: LocalCluster, fixture_models: Path
) -> None:
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    job = await handoff_job(sdxl_cluster, stages=["base", "refine"])
    base, refine = job.stages
    assert base.output.media_type == "application/x-safetensors"
    assert refine.request.latents.key == base.output.key

    torch.set_num_threads(1)
    prompt = f"{BASE}."
    pipe = StableDiffusionXLPipeline.from_pretrained(
        fixture_models / SDXL_FOLDER, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(
        prompt,
        generator=torch.Generator("cpu").manual_seed(SEED),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        denoising_end=SPLIT,
        output_type="latent",
    ).images
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        fixture_models / SDXL_REFINER_FOLDER, add_watermarker=False
    )
    refiner.set_progress_bar_config(disable=True)
    image = refiner(
        prompt,
        image=latents,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        denoising_start=SPLIT,
        output_type="np",
    ).images[0]
    store = LocalStore(sdxl_cluster.state_dir / "store")
    tensors = load(get_artifact(store, base.output.key, base.output.sha256))
    np.testing.assert_array_equal(tensors["latents"], latents.numpy())
    png = get_artifact(store, job.final.key, job.final.sha256)
    ours = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)
    assert np.abs(ours - (image * 255).round()).max() <= 1
