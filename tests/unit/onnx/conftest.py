"""Fixture models, their ONNX exports, and both backends' models, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stageflow.inference.base import LocalModel
from stageflow.inference.registry import create_model

if TYPE_CHECKING:
    from stageflow.inference.onnx.export import ExportReport

# Part-level tolerance: ORT and torch order float sums differently (~1e-6 seen).
PART_ATOL = 1e-4
# Stage-level tolerance on 8-bit images: at most this many levels apart.
STAGE_MAX_LEVELS = 2


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """These tests run torch: one thread each, for bit-identical results."""


@pytest.fixture(scope="session")
def sd_export(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    from stageflow.inference.onnx.export import export_onnx

    return export_onnx(sd_folder, tmp_path_factory.mktemp("onnx") / "tiny-sd")


@pytest.fixture(scope="session")
def esrgan_export(esrgan_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    from stageflow.inference.onnx.export import export_onnx

    return export_onnx(esrgan_folder, tmp_path_factory.mktemp("onnx") / "tiny-esrgan")


def _loaded(family: str, path: Path, **kwargs: object) -> Iterator[LocalModel]:
    model = create_model(family, path, torch_threads=1, **kwargs)  # type: ignore[arg-type]
    assert isinstance(model, LocalModel)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def torch_txt2img(sd_folder: Path) -> Iterator[LocalModel]:
    yield from _loaded("sd-txt2img", sd_folder)


@pytest.fixture(scope="session")
def ort_txt2img(sd_export: ExportReport) -> Iterator[LocalModel]:
    yield from _loaded("sd-txt2img", sd_export.folder, backend="onnxruntime")


@pytest.fixture(scope="session")
def torch_refine(sd_folder: Path) -> Iterator[LocalModel]:
    yield from _loaded("sd-refine", sd_folder)


@pytest.fixture(scope="session")
def ort_refine(sd_export: ExportReport) -> Iterator[LocalModel]:
    yield from _loaded("sd-refine", sd_export.folder, backend="onnxruntime")


@pytest.fixture(scope="session")
def torch_upscaler(esrgan_folder: Path) -> Iterator[LocalModel]:
    yield from _loaded("esrgan", esrgan_folder)


@pytest.fixture(scope="session")
def ort_upscaler(esrgan_export: ExportReport) -> Iterator[LocalModel]:
    yield from _loaded("esrgan", esrgan_export.folder, backend="onnxruntime")
