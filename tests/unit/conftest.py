"""Fixture models built once per session, shared by the inference and ONNX
tests; one torch thread, for bit-identical results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stageflow.inference.fixtures import ESRGAN_FOLDER, SD_FOLDER, build_fixtures


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
