"""Golden image: a subtle breakage that the shape classifier may not notice
(a wrong prediction type) still moves pixels far beyond float noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import ObjectStore
from stageflow.inference.diffusion import Txt2ImgModel
from tests.integration.quality import shared, stage_calls


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    assert a.size == b.size
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))


def _golden() -> Image.Image:
    return Image.open(shared.GOLDEN_PNG).convert("RGB")


async def test_base_stage_reproduces_the_golden_image_over_grpc(
    trained_cluster: LocalCluster, trained_store: ObjectStore
) -> None:
    image = await stage_calls.txt2img(
        trained_cluster.addresses["base"],
        trained_store,
        shared.GOLDEN_PROMPT,
        shared.GOLDEN_SEED,
        shared.SIDE,
        shared.STEPS,
        shared.GUIDANCE,
    )
    diff = _diff(image, _golden())
    assert diff.max() <= shared.GOLDEN_MAX_DIFF and diff.mean() <= shared.GOLDEN_MEAN_DIFF, (
        f"max {diff.max()}, mean {diff.mean():.3f}"
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
