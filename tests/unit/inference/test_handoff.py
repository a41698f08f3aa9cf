"""Latent hand-off on Stable Diffusion 1.5: base to denoising_end, refine from
denoising_start, against diffusers' StableDiffusionPipeline split the same way
(tests/handoff_reference.py) and against one uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stageflow.inference.interface import (
    RefineParams,
    StageInputs,
    StageOutput,
    Txt2ImgParams,
)
from tests.handoff_reference import sd_base_latents, sd_pipeline, sd_resumed_image

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel, Txt2ImgModel

PROMPT = "a red circle on a blue background"
STEPS, GUIDANCE, SIZE, SPLIT = 10, 7.5, 64, 0.8


def call(model: Any, params: Any, inputs: StageInputs | None = None) -> StageOutput:
    output: StageOutput = model.run_with_report(
        params, inputs or StageInputs(), lambda i, n: None, lambda: False
    )
    return output


def handoff(txt2img: Txt2ImgModel, refine: RefineModel) -> tuple[StageOutput, StageOutput]:
    base = call(
        txt2img,
        Txt2ImgParams(
            prompt=PROMPT,
            width=SIZE,
            height=SIZE,
            steps=STEPS,
            guidance_scale=GUIDANCE,
            seed=5,
            denoising_end=SPLIT,
        ),
    )
    params = RefineParams(
        prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, denoising_start=SPLIT
    )
    return base, call(refine, params, StageInputs(latents=base.latents))


def test_sd_handoff_matches_diffusers_split_the_same_way(
    txt2img: Txt2ImgModel, refine: RefineModel, sd_folder: Path
) -> None:
    pipe = sd_pipeline(sd_folder)
    reference = sd_base_latents(
        pipe, PROMPT, seed=5, steps=STEPS, guidance=GUIDANCE, size=SIZE, end=SPLIT
    )
    image = sd_resumed_image(pipe, PROMPT, reference, steps=STEPS, guidance=GUIDANCE, start=SPLIT)
    base, refined = handoff(txt2img, refine)
    assert base.latents is not None
    np.testing.assert_array_equal(base.latents.array, reference.numpy())
    ours = np.asarray(refined.image, dtype=np.int16)
    assert np.abs(ours - (image * 255).round()).max() <= 1


def test_a_handoff_between_one_model_equals_its_uninterrupted_run(
    txt2img: Txt2ImgModel, refine: RefineModel
) -> None:
    """Base 0.8 + refine from 0.8 on the same weights and prompt is the whole
    schedule: the latents are never decoded in between, so nothing is lost."""
    whole = call(
        txt2img,
        Txt2ImgParams(
            prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS, guidance_scale=GUIDANCE, seed=5
        ),
    )
    _, refined = handoff(txt2img, refine)
    assert np.array_equal(np.asarray(refined.image), np.asarray(whole.image))


def test_the_base_runs_only_its_part_of_the_schedule(txt2img: Txt2ImgModel) -> None:
    steps: list[int] = []
    params = Txt2ImgParams(prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS, denoising_end=0.5)
    txt2img.run_with_report(params, StageInputs(), lambda i, n: steps.append(n), lambda: False)
    # Timesteps 901, 801, ..., 501 are at or above the cutoff of 500.
    assert steps == [5] * 5
