"""Whole stages on onnxruntime against the same stages on torch.

The same scheduler and loop drive both backends, so the images differ only
by the parts' float rounding: at most STAGE_MAX_LEVELS of 255 anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference.base import LocalModel
from stageflow.inference.interface import (
    Box,
    RefineMode,
    RefineParams,
    StageInputs,
    StageParams,
    Txt2ImgParams,
    UpscaleParams,
)
from tests.unit.onnx.conftest import STAGE_MAX_LEVELS

if TYPE_CHECKING:
    from stageflow.inference.onnx.export import ExportReport


def run(model: LocalModel, params: StageParams, image: Image.Image | None = None) -> np.ndarray:
    out = model.run(params, StageInputs(image=image), lambda i, n: None, lambda: False)
    return np.asarray(out).astype(np.int16)


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= STAGE_MAX_LEVELS


def picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    noise = rng.integers(0, 40, gradient.shape)
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
@pytest.mark.parametrize(("width", "height"), [(64, 64), (48, 96)])
def test_txt2img(
    torch_txt2img: LocalModel,
    ort_txt2img: LocalModel,
    guidance_scale: float,
    width: int,
    height: int,
) -> None:
    params = Txt2ImgParams(
        prompt="epic game hero portrait",
        negative_prompt="blurry",
        steps=6,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=5,
    )
    ours = run(ort_txt2img, params)
    assert_close(ours, run(torch_txt2img, params))
    # Not trivially equal: a different seed moves the image.
    assert (
        np.abs(ours - run(ort_txt2img, Txt2ImgParams(**{**params.__dict__, "seed": 6}))).mean() > 1
    )


def test_refine_img2img(torch_refine: LocalModel, ort_refine: LocalModel) -> None:
    params = RefineParams(prompt="oil painting", steps=10, strength=0.6, seed=3)
    assert_close(run(ort_refine, params, picture()), run(torch_refine, params, picture()))


def test_refine_inpaint(torch_refine: LocalModel, ort_refine: LocalModel) -> None:
    params = RefineParams(
        prompt="a red door",
        mode=RefineMode.INPAINT,
        steps=8,
        strength=0.9,
        mask_box=Box(0.25, 0.25, 0.75, 0.75),
        seed=9,
    )
    ours = run(ort_refine, params, picture())
    assert_close(ours, run(torch_refine, params, picture()))
    # The masked middle was repainted, not passed through.
    assert np.abs(ours[16:32, 20:44] - np.asarray(picture())[16:32, 20:44]).mean() > 5


@pytest.mark.parametrize("tile_size", [0, 16])
def test_upscale(torch_upscaler: LocalModel, ort_upscaler: LocalModel, tile_size: int) -> None:
    params = UpscaleParams(tile_size=tile_size, tile_overlap=4)
    image = picture((40, 24))
    ours = run(ort_upscaler, params, image)
    assert ours.shape == (96, 160, 3)
    assert_close(ours, run(torch_upscaler, params, image))


def test_describe_reports_backend_and_export_fingerprint(
    ort_txt2img: LocalModel,
    ort_upscaler: LocalModel,
    sd_export: ExportReport,
    esrgan_export: ExportReport,
    torch_txt2img: LocalModel,
) -> None:
    desc = ort_txt2img.describe()
    assert desc.identity.backend == "onnxruntime"
    assert desc.identity.fingerprint == sd_export.fingerprint
    assert desc.identity.fingerprint != torch_txt2img.describe().identity.fingerprint
    # Sizes the exported UNet cannot halve cleanly are refused at the boundary.
    assert desc.size_multiple == torch_txt2img.describe().size_multiple == 16
    with pytest.raises(InvalidArgument):
        ort_txt2img.validate(Txt2ImgParams(prompt="hero", width=72))
    assert ort_upscaler.describe().identity.fingerprint == esrgan_export.fingerprint
