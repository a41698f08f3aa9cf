"""Fixture models built once per session, and loaded models shared by tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference.diffusion import RefineModel, Txt2ImgModel
from inference.fixtures import ESRGAN_FOLDER, SD_FOLDER, build_fixtures
from inference.upscaler import EsrganUpscaler


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # Bit-identical results need a fixed thread count.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="session")
def sd_folder(fixture_models: dict[str, Path]) -> Path:
    return fixture_models[SD_FOLDER]


@pytest.fixture(scope="session")
def esrgan_folder(fixture_models: dict[str, Path]) -> Path:
    return fixture_models[ESRGAN_FOLDER]


@pytest.fixture(scope="session")
def txt2img(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    model = Txt2ImgModel(sd_folder)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def refine(sd_folder: Path) -> Iterator[RefineModel]:
    model = RefineModel(sd_folder)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def upscaler(esrgan_folder: Path) -> Iterator[EsrganUpscaler]:
    model = EsrganUpscaler(esrgan_folder)
    model.load()
    yield model
    model.unload()
