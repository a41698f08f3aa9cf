"""The SDXL family: our loop against diffusers' SDXL pipelines on the same folders.

Base and refiner are the tiny SDXL-shaped fixtures (two text encoders, pooled
projections, a text_time UNet; the refiner with aesthetic-score ids), DDIM as
their folders say. Latents are compared exactly and images after 8-bit
rounding: the arithmetic is diffusers' in the same order on one thread, so
latents come out bit-identical; an image may differ by one level where a value
lands on a .5 rounding boundary (the SD 1.5 parity tests' tolerance).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.inference.interface import (
    Latents,
    RefineParams,
    StageInputs,
    StageOutput,
    Txt2ImgParams,
)

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel, Txt2ImgModel

PROMPT = "a red circle on a blue background"
STEPS = 5
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def base_pipe(sdxl_folder: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refiner_pipe(sdxl_refiner_folder: Path) -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        sdxl_refiner_folder, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed: int) -> Any:
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def call(model: Any, params: Any, inputs: StageInputs | None = None) -> StageOutput:
    output: StageOutput = model.run_with_report(
        params, inputs or StageInputs(), lambda i, n: None, lambda: False
    )
    return output


def levels(reference: np.ndarray) -> np.ndarray:
    """diffusers' float image in [0, 1] as our PNG's 8-bit levels."""
    return np.asarray((reference * 255).round(), dtype=np.int16)


def assert_same_image(ours: Any, reference: np.ndarray) -> None:
    array = np.asarray(ours, dtype=np.int16)
    assert array.shape == reference.shape
    assert np.abs(array - levels(reference)).max() <= 1


@pytest.mark.parametrize(
    ("negative", "guidance"), [("", GUIDANCE), ("blurry", GUIDANCE), ("", 1.0)]
)
def test_base_matches_sdxl_pipeline(
    sdxl_base: Txt2ImgModel, base_pipe: Any, negative: str, guidance: float
) -> None:
    # An empty negative prompt is zeros (force_zeros_for_empty_prompt): diffusers' None.
    reference = base_pipe(
        PROMPT,
        negative_prompt=negative or None,
        generator=generator(3),
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=64,
        width=32,
        output_type="np",
    ).images[0]
    params = Txt2ImgParams(
        prompt=PROMPT,
        negative_prompt=negative,
        width=32,
        height=64,
        steps=STEPS,
        guidance_scale=guidance,
        seed=3,
    )
    assert_same_image(call(sdxl_base, params).image, reference)


def base_latents(sdxl_base: Txt2ImgModel, seed: int = 3) -> Latents:
    params = Txt2ImgParams(
        prompt=PROMPT,
        width=64,
        height=64,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        seed=seed,
        denoising_end=0.8,
    )
    output = call(sdxl_base, params)
    assert output.latents is not None
    return output.latents


def test_base_stops_at_denoising_end_as_diffusers(sdxl_base: Txt2ImgModel, base_pipe: Any) -> None:
    reference = base_pipe(
        PROMPT,
        generator=generator(3),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=64,
        width=64,
        denoising_end=0.8,
        output_type="latent",
    ).images
    latents = base_latents(sdxl_base)
    assert latents.array.dtype == np.float32
    assert latents.space.family == "sdxl"
    assert latents.array.shape == tuple(reference.shape) == (1, 4, 8, 8)
    np.testing.assert_array_equal(latents.array, reference.numpy())


def test_refiner_continues_the_handoff_as_diffusers(
    sdxl_base: Txt2ImgModel, sdxl_refiner: RefineModel, refiner_pipe: Any
) -> None:
    import torch

    latents = base_latents(sdxl_base)
    reference = refiner_pipe(
        PROMPT,
        image=torch.from_numpy(latents.array),
        generator=generator(1),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        denoising_start=0.8,
        output_type="np",
    ).images[0]
    params = RefineParams(
        prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, seed=1, denoising_start=0.8
    )
    assert_same_image(call(sdxl_refiner, params, StageInputs(latents=latents)).image, reference)


def test_refiner_img2img_matches_sdxl_img2img(sdxl_refiner: RefineModel, refiner_pipe: Any) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8))
    reference = refiner_pipe(
        PROMPT,
        image=image,
        strength=0.6,
        generator=generator(1),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        output_type="np",
    ).images[0]
    params = RefineParams(prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, seed=1, strength=0.6)
    assert_same_image(call(sdxl_refiner, params, StageInputs(image=image)).image, reference)


def test_aesthetic_score_conditions_the_refiner(sdxl_refiner: RefineModel) -> None:
    """The refiner's time ids carry the aesthetic scores, not a target size."""
    parts = sdxl_refiner.parts
    cond = parts.condition(PROMPT, "", True, (64, 32))
    assert cond.added["time_ids"].tolist() == [[64, 32, 0, 0, 2.5], [64, 32, 0, 0, 6.0]]
    assert cond.text.shape[-1] == 48  # encoder 2 only
    assert tuple(cond.added["text_embeds"].shape) == (2, 32)


def test_base_conditioning_is_both_encoders_and_sizes(sdxl_base: Txt2ImgModel) -> None:
    cond = sdxl_base.parts.condition(PROMPT, "", True, (64, 32))
    assert cond.added["time_ids"].tolist() == [[64, 32, 0, 0, 64, 32]] * 2
    assert cond.text.shape[-1] == 32 + 48
    # force_zeros_for_empty_prompt: the negative row is zeros.
    assert not cond.text[0].any() and not cond.added["text_embeds"][0].any()


def test_latents_of_another_family_are_refused(
    txt2img: Txt2ImgModel, sdxl_refiner: RefineModel
) -> None:
    sd = call(
        txt2img, Txt2ImgParams(prompt=PROMPT, width=64, height=64, steps=4, denoising_end=0.5)
    ).latents
    params = RefineParams(prompt=PROMPT, steps=4, denoising_start=0.5)
    with pytest.raises(FailedPrecondition, match=r"sd latents .* this model takes sdxl latents"):
        call(sdxl_refiner, params, StageInputs(latents=sd))


def test_denoising_start_needs_latents(sdxl_refiner: RefineModel) -> None:
    from PIL import Image

    params = RefineParams(prompt=PROMPT, steps=4, denoising_start=0.5)
    with pytest.raises(InvalidArgument, match="denoising_start: needs a latents input"):
        call(sdxl_refiner, params, StageInputs(image=Image.new("RGB", (32, 32))))


def test_the_onnx_export_refuses_an_sdxl_folder(sdxl_folder: Path, tmp_path: Path) -> None:
    from stageflow.inference.onnx.export import export_onnx

    with pytest.raises(ValueError, match="StableDiffusionXLPipeline folder; the ONNX export"):
        export_onnx(sdxl_folder, tmp_path / "out")
