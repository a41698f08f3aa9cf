"""Newcomers get the trained fixtures: `stageflow up` and `demo` serve them by
default, and the demo asks for something those models can draw."""

from __future__ import annotations

from pathlib import Path

import pytest

from stageflow.cli.cluster import TRAINED_MODELS_DIR, LocalCluster
from stageflow.cli.jobs import DEMO_SPEC
from stageflow.inference.training import analysis


def test_default_cluster_serves_the_committed_trained_models(tmp_path: Path) -> None:
    cluster = LocalCluster(state_dir=tmp_path)
    assert cluster.model_path("base") == TRAINED_MODELS_DIR / "shapes-sd"
    assert cluster.model_path("refine") == TRAINED_MODELS_DIR / "shapes-sd"
    assert cluster.model_path("upscale") == TRAINED_MODELS_DIR / "shapes-esrgan-x4"
    for stage in ("base", "refine", "upscale"):
        assert (cluster.model_path(stage) / "model_index.json").exists() or (
            cluster.model_path(stage) / "config.json"
        ).exists()


def test_an_explicit_models_dir_keeps_the_build_fixtures_layout(tmp_path: Path) -> None:
    cluster = LocalCluster(state_dir=tmp_path, models_dir=tmp_path / "models")
    assert cluster.model_path("base") == tmp_path / "models" / "tiny-sd"
    assert cluster.model_path("upscale") == tmp_path / "models" / "tiny-esrgan-x4"


def test_demo_prompt_is_in_the_trained_models_vocabulary() -> None:
    # parse_caption raises on anything the shapes model was not trained on.
    assert analysis.parse_caption(DEMO_SPEC.base) == ("circle", "red", "blue")
    # x4 to a 512 px final: the typography pass draws the text at a realistic size.
    assert (DEMO_SPEC.width, DEMO_SPEC.height) == (128, 128)
    assert DEMO_SPEC.text == "Chapter One"


def test_demo_without_the_imported_upscaler_names_the_fix(tmp_path: Path) -> None:
    from stageflow.cli.main import _demo_upscaler
    from stageflow.core.errors import NotFound

    with pytest.raises(NotFound, match=r"`make setup` imports Real-ESRGAN there"):
        _demo_upscaler("realesrgan-x4plus@1", tmp_path)


def test_demo_serves_the_repository_upscaler(tmp_path: Path) -> None:
    from stageflow.cli.main import _demo_upscaler
    from stageflow.inference.repository import ModelRepository

    ModelRepository(tmp_path).import_folder(
        TRAINED_MODELS_DIR / "shapes-esrgan-x4", "realesrgan-x4plus", "1"
    )
    flags = _demo_upscaler("realesrgan-x4plus@1", tmp_path)
    model = "realesrgan-x4plus@1"
    assert flags == ["--model-repository", str(tmp_path.resolve()), "--model", model]
