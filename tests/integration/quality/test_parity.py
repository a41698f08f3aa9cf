"""Parity with the reference implementation: the base stage's image equals
diffusers' own StableDiffusionPipeline on the same folder, prompt, seed and
scheduler."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import ObjectStore
from tests.integration.quality import shared, stage_calls

PROMPTS = ("a green triangle on a black background", "a yellow square on a blue background")
SEED = 3
# Pixel levels (0-255); the two differ only by float rounding.
TOLERANCE = 2


async def test_base_stage_matches_diffusers_pipeline(
    trained_cluster: LocalCluster, trained_store: ObjectStore
) -> None:
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline.from_pretrained(
        shared.TRAINED_SD, dtype=torch.float32, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    for prompt in PROMPTS:
        ours = await stage_calls.txt2img(
            trained_cluster.addresses["base"],
            trained_store,
            prompt,
            SEED,
            shared.SIDE,
            shared.STEPS,
            shared.GUIDANCE,
        )
        reference = pipe(
            prompt,
            height=shared.SIDE,
            width=shared.SIDE,
            num_inference_steps=shared.STEPS,
            guidance_scale=shared.GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
        diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
        assert diff.max() <= TOLERANCE, (prompt, int(diff.max()))
