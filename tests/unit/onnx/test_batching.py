"""Dynamic batching on the model side: a txt2img request run in a batch gives
the image it gives alone, on torch and on ONNX Runtime (dynamic batch axis)."""

from __future__ import annotations

import numpy as np
import pytest

from stageflow.inference.base import LocalModel
from stageflow.inference.interface import StageInputs, Txt2ImgParams

# A batched request may differ from its single run only by float summation
# order inside the bigger UNet/text-encoder batch: at most 2 of 255 levels.
BATCH_MAX_LEVELS = 2

REQUESTS = [
    Txt2ImgParams(prompt="epic game hero portrait", seed=3, steps=4, width=64, height=48),
    Txt2ImgParams(
        prompt="red circle on white", negative_prompt="blurry", seed=9, steps=4, width=64, height=48
    ),
    Txt2ImgParams(prompt="a green tree", seed=3, steps=4, width=64, height=48),
]


def _single(model: LocalModel, params: Txt2ImgParams) -> np.ndarray:
    return np.asarray(model.run(params, StageInputs(), lambda i, n: None, lambda: False))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_batched_outputs_equal_single_runs(
    backend: str,
    guidance_scale: float,
    request: pytest.FixtureRequest,
) -> None:
    model: LocalModel = request.getfixturevalue(
        "torch_txt2img" if backend == "torch" else "ort_txt2img"
    )
    batch = [Txt2ImgParams(**{**p.__dict__, "guidance_scale": guidance_scale}) for p in REQUESTS]
    steps: list[tuple[int, int]] = []
    outputs = model.run_batch(
        batch, [StageInputs()] * len(batch), lambda i, n: steps.append((i, n)), lambda: False
    )
    assert steps == [(i, 4) for i in range(1, 5)]
    assert len(outputs) == len(batch)
    images = [np.asarray(o.image).astype(np.int16) for o in outputs]
    for params, image in zip(batch, images, strict=True):
        alone = _single(model, params)
        assert image.shape == alone.shape
        assert np.abs(image - alone).max() <= BATCH_MAX_LEVELS
    # Each request keeps its own prompt and seed: the outputs are not copies.
    assert np.abs(images[0] - images[1]).mean() > 1
    assert not np.array_equal(images[0], images[2])  # same seed, other prompt


def test_batch_key_groups_only_shape_steps_and_guidance(torch_txt2img: LocalModel) -> None:
    a = Txt2ImgParams(prompt="a", seed=1, width=64, height=64, steps=4)
    assert torch_txt2img.batch_key(a) == torch_txt2img.batch_key(
        Txt2ImgParams(prompt="b", negative_prompt="c", seed=2, width=64, height=64, steps=4)
    )
    for other in ({"width": 48}, {"height": 48}, {"steps": 5}, {"guidance_scale": 3.0}):
        changed = Txt2ImgParams(**{**a.__dict__, **other})
        assert torch_txt2img.batch_key(changed) != torch_txt2img.batch_key(a)
