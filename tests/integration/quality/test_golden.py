"""Golden image: a subtle breakage that the shape classifier may not notice
(a wrong prediction type) still moves pixels far beyond float noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stageflow.inference.diffusion import Txt2ImgModel
from tests.integration.quality import shared, stage_calls


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    assert a.size == b.size
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))


def _golden() -> Image.Image:
    return Image.open(shared.GOLDEN_PNG).convert("RGB")


async def test_base_stage_reproduces_the_golden_image_over_grpc(
    trained_base: shared.BaseStage,
) -> None:
    """fp32 within float noise; bf16 within its own measured bound (shared.py)."""
    image = await stage_calls.txt2img(
        trained_base.address,
        trained_base.store,
        shared.GOLDEN_PROMPT,
        shared.GOLDEN_SEED,
        shared.SIDE,
        shared.STEPS,
        shared.GUIDANCE,
    )
    diff = _diff(image, _golden())
    # A stage that silently served fp32 would pass bf16's bound: its rounding must show.
    assert trained_base.dtype == "fp32" or diff.max() > 0, "bf16 made fp32's exact pixels"
    max_diff, mean_diff = shared.GOLDEN_TOLERANCE[trained_base.dtype]
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (
        f"{trained_base.dtype}: max {diff.max()}, mean {diff.mean():.3f}"
    )


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_wrong_prediction_type_moves_pixels_beyond_the_tolerance(
    trained_txt2img: Txt2ImgModel, tmp_path: Path, prediction_type: str
) -> None:
    # The control: in-process with the folder's own scheduler matches the golden.
    right = shared.run_in_process(trained_txt2img, shared.GOLDEN_PROMPT, shared.GOLDEN_SEED)
    assert _diff(right, _golden()).max() <= shared.GOLDEN_MAX_DIFF
    # The same folder with one word of its scheduler config changed.
    folder = tmp_path / "shapes-sd"
    shutil.copytree(shared.TRAINED_SD, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = prediction_type
    config_file.write_text(json.dumps(config))
    model = Txt2ImgModel(folder)
    model.load()
    try:
        image = shared.run_in_process(model, shared.GOLDEN_PROMPT, shared.GOLDEN_SEED)
    finally:
        model.unload()
    diff = _diff(image, _golden())
    assert diff.max() > 10 * shared.GOLDEN_MAX_DIFF
    assert diff.mean() > 10 * shared.GOLDEN_MEAN_DIFF
    # ... and beyond bf16's looser bound too, so that bound still catches it.
    assert diff.max() > shared.GOLDEN_BF16_MAX_DIFF and diff.mean() > shared.GOLDEN_BF16_MEAN_DIFF
