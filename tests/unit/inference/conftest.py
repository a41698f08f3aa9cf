"""Fixture models built once per session, and loaded models shared by tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel, Txt2ImgModel
    from stageflow.inference.upscaler import EsrganUpscaler


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """These tests run torch: one thread each, for bit-identical results."""


@pytest.fixture(scope="session")
def txt2img(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(sd_folder)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def refine(sd_folder: Path) -> Iterator[RefineModel]:
    from stageflow.inference.diffusion import RefineModel

    model = RefineModel(sd_folder)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def upscaler(esrgan_folder: Path) -> Iterator[EsrganUpscaler]:
    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(esrgan_folder)
    model.load()
    yield model
    model.unload()
