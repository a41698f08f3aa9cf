"""The registry: names to classes, cheap to import."""

from __future__ import annotations

from pathlib import Path

import pytest

from stageflow.inference import registry
from stageflow.inference.base import LocalModel
from stageflow.inference.interface import StageKind


def test_families_map_to_stage_kinds() -> None:
    kinds = {name: cls.kind for name, cls in registry.MODEL_FAMILIES.items()}
    assert kinds == {
        "sd-txt2img": StageKind.TXT2IMG,
        "sd-refine": StageKind.REFINE,
        "esrgan": StageKind.UPSCALE,
    }


def test_unknown_family_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="esrgan, sd-refine, sd-txt2img"):
        registry.create_model("sdxl", tmp_path)


def test_create_model_constructs_without_loading(tmp_path: Path) -> None:
    model = registry.create_model("esrgan", tmp_path / "nowhere", name="up", torch_threads=1)
    assert type(model).__name__ == "EsrganUpscaler"
    with pytest.raises(FileNotFoundError):
        model.load()


def test_the_engine_cache_reaches_the_backend_options(tmp_path: Path) -> None:
    """The stage's STAGEFLOW_TRT_CACHE (StageSettings.trt_cache) arrives as an argument:
    the model layer reads no environment."""
    model = registry.create_model(
        "esrgan", tmp_path, backend="tensorrt", engine_cache=tmp_path / "engines"
    )
    assert isinstance(model, LocalModel)
    assert model.backend_options.engine_cache == tmp_path / "engines"
    default = registry.create_model("esrgan", tmp_path, backend="tensorrt")
    assert isinstance(default, LocalModel) and default.backend_options.engine_cache is None
