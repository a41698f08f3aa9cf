"""A request without a size gets the model's native size, by path as by repository."""

from __future__ import annotations

from pathlib import Path

from stageflow.cli.cluster import TRAINED_MODELS_DIR
from stageflow.inference.interface import Txt2ImgParams
from stageflow.inference.model_loader import RepositoryLoader
from stageflow.inference.registry import create_model
from stageflow.inference.repository import ModelRepository, native_side
from stageflow.stage import codec
from stageflow.v1 import stage_pb2

SHAPES = TRAINED_MODELS_DIR / "shapes-sd"


def test_native_size_by_model_path_and_by_repository(tmp_path: Path) -> None:
    codec.install()
    assert native_side(SHAPES) == 32  # not the params class's 128
    by_path = create_model("sd-txt2img", SHAPES)  # what --model-path builds
    by_path.load()
    repo = ModelRepository(tmp_path / "repo")
    repo.import_folder(SHAPES, "shapes-sd", "1")
    loader = RepositoryLoader(repo, "txt2img", create_model, families={"diffusers": "sd-txt2img"})
    by_repository = loader.load("shapes-sd@1")
    request = stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="a red circle"))
    for model in (by_path, by_repository):
        params = codec.params_from_request(request, model.describe().param_defaults)
        assert isinstance(params, Txt2ImgParams)
        assert (params.width, params.height) == (32, 32)
    by_path.unload()
    by_repository.unload()
