"""The committed trained fixtures are intact, stored in fp16, and load as float32."""

from __future__ import annotations

import hashlib
import json

import pytest

from stageflow.cli.cluster import TRAINED_MODELS_DIR


def manifest() -> dict[str, object]:
    body: dict[str, object] = json.loads((TRAINED_MODELS_DIR / "MANIFEST.json").read_text())
    return body


def test_every_file_matches_its_manifest_digest() -> None:
    files = manifest()["files"]
    assert isinstance(files, dict) and files
    on_disk = {
        p.relative_to(TRAINED_MODELS_DIR).as_posix()
        for p in TRAINED_MODELS_DIR.rglob("*")
        if p.is_file() and p.name != "MANIFEST.json"
    }
    assert on_disk == set(files)
    for name, digest in files.items():
        assert hashlib.sha256((TRAINED_MODELS_DIR / name).read_bytes()).hexdigest() == digest, name


def test_manifest_records_the_training_settings_and_held_out_set() -> None:
    body = manifest()
    sd = body["shapes-sd"]
    assert isinstance(sd, dict) and sd["settings"]["seed"] == 0
    data = body["data"]
    assert isinstance(data, dict) and len(data["held_out"]) >= 10


@pytest.mark.parametrize(
    "weights",
    [
        "shapes-sd/unet/diffusion_pytorch_model.safetensors",
        "shapes-sd/vae/diffusion_pytorch_model.safetensors",
        "shapes-sd/text_encoder/model.safetensors",
        "shapes-esrgan-x4/model.safetensors",
    ],
)
def test_weights_are_stored_in_fp16(weights: str) -> None:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(TRAINED_MODELS_DIR / weights))
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}


def test_loaders_give_float32_parts() -> None:
    import torch

    from stageflow.inference.rrdbnet import load_rrdbnet
    from stageflow.inference.sd_parts import load_torch_parts

    parts = load_torch_parts(TRAINED_MODELS_DIR / "shapes-sd")
    ids = parts.tokenize("a red circle on a blue background")
    assert parts.encode_text(ids).dtype == torch.float32
    net, _ = load_rrdbnet(TRAINED_MODELS_DIR / "shapes-esrgan-x4")
    assert {p.dtype for p in net.parameters()} == {torch.float32}
