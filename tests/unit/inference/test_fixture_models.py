"""Fixture models: reproducible to the byte, loadable by diffusers as is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_same_seed_gives_identical_files(tmp_path: Path, fixture_models: dict[str, Path]) -> None:
    from stageflow.inference.fixtures import build_fixtures

    again = build_fixtures(tmp_path / "again", seed=0)
    first = file_digests(fixture_models["manifest"].parent)
    assert first == file_digests(again["manifest"].parent)
    assert fixture_models["manifest"].read_bytes() == again["manifest"].read_bytes()


def test_other_seed_gives_other_weights(tmp_path: Path, fixture_models: dict[str, Path]) -> None:
    from stageflow.inference.fixtures import build_fixtures

    other = file_digests(build_fixtures(tmp_path, seed=1)["manifest"].parent)
    first = file_digests(fixture_models["manifest"].parent)
    assert set(other) == set(first)
    for weights in (
        "tiny-sd/unet/diffusion_pytorch_model.safetensors",
        "tiny-esrgan-x4/model.safetensors",
    ):
        assert other[weights] != first[weights]
    assert other["tiny-sd/unet/config.json"] == first["tiny-sd/unet/config.json"]


def test_manifest_lists_every_file_with_its_digest(fixture_models: dict[str, Path]) -> None:
    manifest = json.loads(fixture_models["manifest"].read_text())
    assert manifest["files"] == file_digests(fixture_models["manifest"].parent)


def test_rebuild_in_place_replaces_the_folders(tmp_path: Path) -> None:
    from stageflow.inference.fixtures import build_fixtures

    build_fixtures(tmp_path, seed=0)
    (tmp_path / "tiny-sd" / "stale.bin").write_bytes(b"x")
    build_fixtures(tmp_path, seed=0)
    assert not (tmp_path / "tiny-sd" / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "tiny-esrgan-x4",
        "tiny-sd",
        "tiny-sdxl",
        "tiny-sdxl-refiner",
    ]


def test_diffusers_loads_the_folder_as_is(sd_folder: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length
    assert all(p.suffix != ".bin" for p in sd_folder.rglob("*"))  # safetensors only
