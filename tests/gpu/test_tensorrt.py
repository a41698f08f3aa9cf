"""TensorRT backend: engines from the fixture exports, parity with torch, engine cache.

Runs only where CUDA and the `tensorrt` package are present (NVIDIA's wheels
or containers); elsewhere it is skipped with the reason. TensorRT may use
TF32 on Ampere and newer GPUs, hence looser tolerances than onnxruntime's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (optional backend)")

from stageflow.inference.fixtures import ESRGAN_FOLDER, SD_FOLDER, build_fixtures  # noqa: E402
from stageflow.inference.interface import StageInputs, Txt2ImgParams, UpscaleParams  # noqa: E402
from stageflow.inference.onnx.export import ExportReport, export_onnx  # noqa: E402
from stageflow.inference.onnx.layout import read_manifest  # noqa: E402
from stageflow.inference.registry import create_model  # noqa: E402
from stageflow.inference.rrdbnet import load_rrdbnet  # noqa: E402
from stageflow.inference.tensorrt.engine import Profile, load_engine  # noqa: E402
from stageflow.inference.tensorrt.runtime import load_trt_upscaler  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def exports(
    folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ExportReport]:
    out = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(folders[name], out / name) for name in (SD_FOLDER, ESRGAN_FOLDER)}


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for the module: the stages' tests build each engine once."""
    return tmp_path_factory.mktemp("trt-cache")


def test_upscaler_engine_matches_torch_and_is_cached(
    folders: dict[str, Path], exports: dict[str, ExportReport], engine_cache: Path
) -> None:
    net, scale = load_trt_upscaler(exports[ESRGAN_FOLDER].folder, cache_dir=engine_cache)
    reference, _ = load_rrdbnet(folders[ESRGAN_FOLDER])
    image = torch.rand((1, 3, 24, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = net(image).cpu()
        expected = reference(image)
    assert scale == 4 and out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-2


def test_engine_cache_builds_once_per_key(exports: dict[str, ExportReport], tmp_path: Path) -> None:
    folder = exports[ESRGAN_FOLDER].folder
    digest = read_manifest(folder).files["upscaler.onnx"]
    profile = Profile({"image": ((1, 3, 8, 8), (1, 3, 32, 32), (2, 3, 64, 64))})
    onnx_path = folder / "upscaler.onnx"
    _, built = load_engine(onnx_path, digest, profile, cache_dir=tmp_path)
    _, built_again = load_engine(onnx_path, digest, profile, cache_dir=tmp_path)
    other = Profile({"image": ((1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32))})
    _, built_other = load_engine(onnx_path, digest, other, cache_dir=tmp_path)
    assert (built, built_again, built_other) == (True, False, True)
    assert len(list(tmp_path.glob("*.plan"))) == 2


def test_txt2img_stage_close_to_torch(
    folders: dict[str, Path], exports: dict[str, ExportReport], engine_cache: Path
) -> None:
    params = Txt2ImgParams(prompt="hero", steps=4, width=64, height=64, seed=1)
    images = []
    for backend, folder in (("torch", folders[SD_FOLDER]), ("tensorrt", exports[SD_FOLDER].folder)):
        model = create_model(
            "sd-txt2img", folder, backend=backend, device="cuda", engine_cache=engine_cache
        )
        model.load()
        assert model.describe().identity.backend == backend
        out = model.run(params, StageInputs(), lambda i, n: None, lambda: False)
        images.append(np.asarray(out).astype(np.int16))
        model.unload()
    assert np.abs(images[0] - images[1]).max() <= 4


def test_upscale_stage_runs_tiled(exports: dict[str, ExportReport], engine_cache: Path) -> None:
    model = create_model(
        "esrgan",
        exports[ESRGAN_FOLDER].folder,
        backend="tensorrt",
        device="cuda",
        engine_cache=engine_cache,
    )
    model.load()
    image = Image.new("RGB", (48, 40), (120, 30, 200))
    out = model.run(
        UpscaleParams(tile_size=16, tile_overlap=4),
        StageInputs(image=image),
        lambda i, n: None,
        lambda: False,
    )
    assert out.size == (192, 160)
