"""Refine stage: img2img parity with diffusers, inpaint keeps what is unmasked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import (
    STRENGTH_IMG2IMG,
    STRENGTH_INPAINT,
    STRENGTH_TEXT,
    Box,
    RefineMode,
    RefineParams,
    StageInputs,
)

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def refine_run(model: RefineModel, params: RefineParams, inputs: StageInputs) -> np.ndarray:
    return np.asarray(model.run(params, inputs, lambda i, n: None, lambda: False))


def test_img2img_matches_diffusers_pipeline(refine: RefineModel, sd_folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    image = noise_image()
    reference = pipe(
        "epic game hero",
        image=image,
        strength=0.5,
        generator=torch.Generator("cpu").manual_seed(5),
        num_inference_steps=6,
        guidance_scale=7.5,
        output_type="np",
    ).images[0]
    params = RefineParams(prompt="epic game hero", seed=5, steps=6, strength=0.5)
    ours = refine_run(refine, params, StageInputs(image=image))
    assert np.abs(ours.astype(np.int16) - (reference * 255).round()).max() <= 1


def test_seed_changes_the_image(refine: RefineModel) -> None:
    inputs = StageInputs(image=noise_image())
    a = refine_run(refine, RefineParams(prompt="hero", steps=4, seed=1), inputs)
    b = refine_run(refine, RefineParams(prompt="hero", steps=4, seed=2), inputs)
    assert np.abs(a.astype(np.int16) - b).mean() > 1


def test_strength_sets_how_far_the_image_moves(refine: RefineModel) -> None:
    image = noise_image()
    original = np.asarray(image).astype(np.int16)
    light = refine_run(
        refine, RefineParams(prompt="hero", steps=10, strength=0.1), StageInputs(image=image)
    )
    heavy = refine_run(
        refine, RefineParams(prompt="hero", steps=10, strength=0.9), StageInputs(image=image)
    )
    assert np.abs(light - original).mean() < np.abs(heavy - original).mean()


def test_inpaint_box_keeps_unmasked_pixels_exactly(refine: RefineModel) -> None:
    from stageflow.inference.masks import blur_mask, mask_from_box

    image = noise_image(seed=3)
    box = Box(0.25, 0.25, 0.75, 0.5)
    params = RefineParams(prompt="chapter one", mode=RefineMode.INPAINT, mask_box=box, steps=8)
    out = refine_run(refine, params, StageInputs(image=image))
    untouched = np.asarray(blur_mask(mask_from_box(box, image.size), 4)) == 0
    assert untouched.mean() > 0.3
    original = np.asarray(image)
    assert np.array_equal(out[untouched], original[untouched])
    # Inside the box something was repainted.
    assert np.abs(out[20:28, 20:44].astype(np.int16) - original[20:28, 20:44]).mean() > 5


def test_inpaint_mask_image_without_blur(refine: RefineModel) -> None:
    image = noise_image(seed=4)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (8, 40, 56, 56))
    params = RefineParams(prompt="text", mode=RefineMode.INPAINT, inpaint_mask_blur=0, steps=4)
    out = refine_run(refine, params, StageInputs(image=image, mask=mask))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(image)[keep])
    assert not np.array_equal(out[~keep], np.asarray(image)[~keep])


def test_reference_workflow_config_is_accepted(refine: RefineModel) -> None:
    # The practitioner's refinement settings, as a typography inpaint pass.
    params = RefineParams(
        prompt="overlay text 'Chapter One' with clear legible typography",
        steps=40,
        guidance_scale=7.5,
        seed=42,
        inpaint_mask_blur=4,
        mode=RefineMode.INPAINT,
        mask_box=Box(0.1, 0.7, 0.9, 0.95),
    )
    refine.validate(params)
    calls: list[int] = []
    out = refine.run(
        params, StageInputs(image=noise_image()), lambda i, n: calls.append(i), lambda: False
    )
    # Unset strength is the inpaint default: 40 steps x 0.75.
    assert params.strength == STRENGTH_INPAINT == 0.75
    assert out.size == (64, 64) and len(calls) == 30


def test_an_unset_strength_follows_the_pass() -> None:
    assert RefineParams(prompt="p").strength == STRENGTH_IMG2IMG
    assert RefineParams(prompt="p", mode=RefineMode.INPAINT).strength == STRENGTH_INPAINT
    assert RefineParams(prompt="p", text="Hi", mode=RefineMode.INPAINT).strength == STRENGTH_TEXT
    assert RefineParams(prompt="p", text="Hi", strength=0.9).strength == 0.9


@pytest.mark.parametrize(
    "box", [Box(0.5, 0.1, 0.4, 0.9), Box(0.1, 0.5, 0.9, 0.5), Box(-0.1, 0, 1, 1), Box(0, 0, 1.2, 1)]
)
def test_rejects_invalid_mask_box(refine: RefineModel, box: Box) -> None:
    with pytest.raises(InvalidArgument) as err:
        refine.validate(RefineParams(prompt="x", mode=RefineMode.INPAINT, mask_box=box))
    assert err.value.field == "mask_box"


def test_rejects_too_few_effective_steps(refine: RefineModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        refine.validate(RefineParams(prompt="x", steps=2, strength=0.3))
    assert err.value.field == "strength"


def test_inpaint_needs_a_mask(refine: RefineModel) -> None:
    params = RefineParams(prompt="x", mode=RefineMode.INPAINT)
    refine.validate(params)
    with pytest.raises(InvalidArgument) as err:
        refine.validate_inputs(params, StageInputs(image=noise_image()))
    assert err.value.field == "mask"


def test_rejects_mask_of_another_size(refine: RefineModel) -> None:
    params = RefineParams(prompt="x", mode=RefineMode.INPAINT)
    inputs = StageInputs(image=noise_image(), mask=Image.new("L", (32, 64)))
    with pytest.raises(InvalidArgument) as err:
        refine.validate_inputs(params, inputs)
    assert err.value.field == "mask"


def test_missing_image_is_an_invalid_argument(refine: RefineModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        refine.validate_inputs(RefineParams(prompt="x"), StageInputs())
    assert err.value.field == "image"


@pytest.mark.parametrize("size", [(72, 64), (64, 2048)])
def test_rejects_image_sides(refine: RefineModel, size: tuple[int, int]) -> None:
    with pytest.raises(InvalidArgument) as err:
        refine.validate_inputs(RefineParams(prompt="x"), StageInputs(image=Image.new("RGB", size)))
    assert err.value.field == "image"


# --- dynamic batching ----------------------------------------------------------

# A batched call may differ from its lone run only by float summation order.
BATCH_MAX_LEVELS = 2


def run_batch(
    model: RefineModel, params: list[RefineParams], inputs: list[StageInputs]
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    steps: list[tuple[int, int]] = []
    outputs = model.run_batch(params, inputs, lambda i, n: steps.append((i, n)), lambda: False)
    return [np.asarray(o.image).astype(np.int16) for o in outputs], steps


def test_img2img_batch_of_two_sizes_equals_each_lone_run(refine: RefineModel) -> None:
    import torch

    torch.set_num_threads(1)
    params = [
        RefineParams(prompt="hero", seed=1, steps=4, strength=0.5),
        RefineParams(prompt="a castle", negative_prompt="blur", seed=2, steps=4, strength=0.5),
        RefineParams(prompt="hero", seed=3, steps=4, strength=0.5),
    ]
    inputs = [
        StageInputs(image=noise_image(64, 64, seed=1)),
        StageInputs(image=noise_image(64, 64, seed=2)),
        StageInputs(image=noise_image(48, 64, seed=3)),
    ]
    batched, steps = run_batch(refine, params, inputs)
    for p, i, out in zip(params, inputs, batched, strict=True):
        alone = refine_run(refine, p, i).astype(np.int16)
        assert out.shape == alone.shape
        assert np.abs(out - alone).max() <= BATCH_MAX_LEVELS
    assert np.abs(batched[0] - batched[1]).mean() > 1  # not one image twice
    # Two sizes: two sub-batches of 2 steps each (4 × 0.5), counted as one run.
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_inpaint_batch_keeps_each_requests_own_mask(refine: RefineModel) -> None:
    import torch

    torch.set_num_threads(1)
    boxes = [Box(0.0, 0.0, 0.5, 0.5), Box(0.5, 0.5, 1.0, 1.0)]
    params = [
        RefineParams(
            prompt="hero",
            seed=4 + k,
            steps=4,
            mode=RefineMode.INPAINT,
            mask_box=box,
            inpaint_mask_blur=0,
        )
        for k, box in enumerate(boxes)
    ]
    images = [noise_image(64, 64, seed=7), noise_image(64, 64, seed=8)]
    batched, _ = run_batch(refine, params, [StageInputs(image=i) for i in images])
    for p, image, out in zip(params, images, batched, strict=True):
        alone = refine_run(refine, p, StageInputs(image=image)).astype(np.int16)
        assert np.abs(out - alone).max() <= BATCH_MAX_LEVELS
    # Outside its own box each output is its input, exactly.
    original = [np.asarray(i).astype(np.int16) for i in images]
    assert (batched[0][32:, :] == original[0][32:, :]).all()
    assert (batched[1][:32, :] == original[1][:32, :]).all()


def test_typography_requests_are_not_batched_and_mixed_batches_are_refused(
    refine: RefineModel,
) -> None:
    assert refine.batch_key(RefineParams(prompt="p", text="Chapter One")) is None
    assert refine.batch_key(RefineParams(prompt="p", steps=4)) != refine.batch_key(
        RefineParams(prompt="p", steps=6)
    )
    with pytest.raises(InvalidArgument, match="equal mode, steps"):
        refine.run_batch(
            [RefineParams(prompt="p", steps=4), RefineParams(prompt="p", steps=6)],
            [StageInputs(image=noise_image())] * 2,
            lambda i, n: None,
            lambda: False,
        )
