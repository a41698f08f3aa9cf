"""Base stage: our loop against diffusers' own pipeline, sizes, seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import StageInputs, Txt2ImgParams

if TYPE_CHECKING:
    from stageflow.inference.diffusion import Txt2ImgModel


def run(model: Txt2ImgModel, **kwargs: object) -> np.ndarray:
    params = Txt2ImgParams(**{"prompt": "epic game hero portrait", "steps": 4, **kwargs})  # type: ignore[arg-type]
    image = model.run(params, StageInputs(), lambda i, n: None, lambda: False)
    return np.asarray(image)


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_matches_diffusers_pipeline(
    txt2img: Txt2ImgModel, sd_folder: Path, guidance_scale: float
) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        "epic game hero portrait",
        negative_prompt="blurry text",
        generator=torch.Generator("cpu").manual_seed(11),
        num_inference_steps=5,
        guidance_scale=guidance_scale,
        height=64,
        width=48,
        output_type="np",
    ).images[0]
    ours = run(
        txt2img,
        negative_prompt="blurry text",
        seed=11,
        steps=5,
        guidance_scale=guidance_scale,
        height=64,
        width=48,
    )
    # Same arithmetic in the same order: equal after rounding to 8 bits
    # (tolerance one level, for float rounding at a .5 boundary).
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(np.int16) - (reference * 255).round()).max() <= 1


def test_seed_changes_the_image(txt2img: Txt2ImgModel) -> None:
    a, b = run(txt2img, seed=1), run(txt2img, seed=2)
    assert np.abs(a.astype(np.int16) - b).mean() > 1


def test_prompt_and_guidance_change_the_image(txt2img: Txt2ImgModel) -> None:
    base = run(txt2img)
    assert not np.array_equal(base, run(txt2img, prompt="red circle on white background"))
    assert not np.array_equal(base, run(txt2img, guidance_scale=1.0))


@pytest.mark.parametrize(
    ("field", "value"), [("width", 72), ("height", 8), ("width", 1040), ("height", 2048)]
)
def test_rejects_sizes_off_the_grid_or_out_of_bounds(
    txt2img: Txt2ImgModel, field: str, value: int
) -> None:
    desc = txt2img.describe()
    assert desc.size_multiple == 16  # VAE /8 times 2 UNet levels
    params = Txt2ImgParams(prompt="hero", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        txt2img.validate(params)
    assert err.value.field == field


def test_rejects_empty_prompt(txt2img: Txt2ImgModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        txt2img.validate(Txt2ImgParams(prompt="  "))
    assert err.value.field == "prompt"


def test_demo_size_runs(txt2img: Txt2ImgModel) -> None:
    image = txt2img.run(
        Txt2ImgParams(prompt="hero"), StageInputs(), lambda i, n: None, lambda: False
    )
    assert image.size == (128, 128)
