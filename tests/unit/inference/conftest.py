"""Fixture models built once per session, and loaded models shared by tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel, Txt2ImgModel
    from stageflow.inference.upscaler import EsrganUpscaler


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """These tests run torch: one thread each, for bit-identical results."""


def _loaded(family: str, folder: Path) -> Iterator[Any]:
    """A registry family's model over `folder`, loaded for the session."""
    from stageflow.inference.registry import create_model

    model = create_model(family, folder)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def txt2img(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    yield from _loaded("sd-txt2img", sd_folder)


@pytest.fixture(scope="session")
def refine(sd_folder: Path) -> Iterator[RefineModel]:
    yield from _loaded("sd-refine", sd_folder)


@pytest.fixture(scope="session")
def sdxl_base(sdxl_folder: Path) -> Iterator[Txt2ImgModel]:
    """The SDXL base folder: the same Txt2ImgModel, the SDXL family's parts."""
    yield from _loaded("sd-txt2img", sdxl_folder)


@pytest.fixture(scope="session")
def sdxl_refiner(sdxl_refiner_folder: Path) -> Iterator[RefineModel]:
    yield from _loaded("sd-refine", sdxl_refiner_folder)


@pytest.fixture(scope="session")
def upscaler(esrgan_folder: Path) -> Iterator[EsrganUpscaler]:
    yield from _loaded("esrgan", esrgan_folder)
