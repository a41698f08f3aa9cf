"""Weights stored in their serving dtype (diffusers variants): written by
`stageflow models variant`, read by the torch loader instead of a cast at load,
with the same images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stageflow.inference.interface import StageInputs, Txt2ImgParams
from stageflow.inference.variants import is_variant, variant_path, write_variant

PARAMS = Txt2ImgParams(prompt="a red circle", steps=3, width=32, height=32, seed=7)


def image(folder: Path, dtype: str) -> np.ndarray:
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(folder, dtype=dtype)
    model.load()
    try:
        return np.asarray(model.run(PARAMS, StageInputs(), lambda i, n: None, lambda: False))
    finally:
        model.unload()


@pytest.fixture
def copy(sd_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sd_folder, tmp_path / "sd"))


def test_a_variant_holds_every_weight_part_cast_and_the_rest_as_it_was(copy: Path) -> None:
    import torch
    from safetensors.torch import load_file

    written = write_variant(copy, "bf16")
    assert sorted(p.relative_to(copy).as_posix() for p in written) == [
        "text_encoder/model.bf16.safetensors",
        "unet/diffusion_pytorch_model.bf16.safetensors",
        "vae/diffusion_pytorch_model.bf16.safetensors",
    ]
    source = load_file(copy / "unet" / "diffusion_pytorch_model.safetensors")
    stored = load_file(copy / "unet" / "diffusion_pytorch_model.bf16.safetensors")
    assert stored.keys() == source.keys()
    for key, tensor in source.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert stored[key].dtype == expected.dtype
        assert torch.equal(stored[key], expected), key
    # Written again, the variant is replaced, not stacked on (x.bf16.bf16...).
    assert write_variant(copy, "bf16") == written
    assert not list(copy.rglob("*.partial"))


def test_the_loader_maps_the_variant_and_serves_the_images_of_a_cast_at_load(
    sd_folder: Path, copy: Path
) -> None:
    from safetensors.torch import load_file, save_file

    write_variant(copy, "bf16")
    # Zero the fp32 UNet: an image still equal to the cast's came from the variant.
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.zero_() for k, v in load_file(unet).items()}, str(unet))
    cast = image(sd_folder, "bf16")
    np.testing.assert_array_equal(image(copy, "bf16"), cast)
    # fp32 reads the folder's own (zeroed) files: the variant is for bf16 alone.
    assert not np.array_equal(image(copy, "fp32"), image(sd_folder, "fp32"))


def test_stored_variant_names_the_dtype_only_where_its_files_are(copy: Path) -> None:
    import torch

    from stageflow.inference.sd_parts import stored_variant

    assert stored_variant(copy / "unet", torch.bfloat16) is None
    write_variant(copy, "bf16")
    assert stored_variant(copy / "unet", torch.bfloat16) == "bf16"
    assert stored_variant(copy / "unet", torch.float16) is None
    assert stored_variant(copy / "unet", torch.float32) is None


def test_what_cannot_be_a_variant_is_refused(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a variant is stored in fp16 or bf16; got 'fp32'"):
        write_variant(copy, "fp32")
    with pytest.raises(ValueError, match="no safetensors weights"):
        write_variant(tmp_path / "empty", "bf16")
    index = copy / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ValueError, match="sharded weights"):
        write_variant(copy, "bf16")


def test_variant_names_follow_diffusers() -> None:
    weights = Path("unet/diffusion_pytorch_model.safetensors")
    assert variant_path(weights, "fp16").name == "diffusion_pytorch_model.fp16.safetensors"
    assert is_variant(variant_path(weights, "bf16")) and not is_variant(weights)


def test_an_sdxl_folder_gets_both_text_encoders_and_the_same_images(
    sdxl_folder: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(sdxl_folder, tmp_path / "sdxl"))
    written = write_variant(folder, "bf16")
    assert {p.parent.name for p in written} == {"unet", "vae", "text_encoder", "text_encoder_2"}
    np.testing.assert_array_equal(image(folder, "bf16"), image(sdxl_folder, "bf16"))
