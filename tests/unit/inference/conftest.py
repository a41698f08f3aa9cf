"""Fixture models built once per session, and loaded models shared by tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.inference.diffusion import RefineModel, Txt2ImgModel
from stageflow.inference.upscaler import EsrganUpscaler


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
