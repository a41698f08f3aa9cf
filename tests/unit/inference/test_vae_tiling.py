"""Tiled VAE decode: the blend is exact for a local decoder, close for the real one,
and a memory budget switches it on by itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from stageflow.inference.vae_tiling import (
    DecodeShape,
    TilePlan,
    VaeTiling,
    decode_peak_bytes,
    plan_tile,
    tiled_decode,
)

if TYPE_CHECKING:
    import torch

# The fixture VAE (4 levels, 8 base channels; native 128 px) on a 384x256 scene, tiled
# vs whole, measured: 128 px tiles overlapping 32 px 22.0 dB (diffusers'
# AutoencoderKL.tiled_decode at its defaults, the same tile and overlap: 21.0 dB),
# 256 px tiles 36.0 dB. GroupNorm statistics differ per tile, more on a tiny VAE.
TILED_MIN_PSNR_DB = 20.0
LARGE_TILES_MIN_PSNR_DB = 33.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Of two images in [-1, 1], on the 8-bit scale."""
    mse = float(((a - b) * 127.5).pow(2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def upsample(latents: torch.Tensor) -> torch.Tensor:
    # A decoder with no context across pixels: tiling must reproduce it exactly.
    return latents[:, :3].repeat_interleave(8, 2).repeat_interleave(8, 3)


@pytest.mark.parametrize("shape", [(1, 4, 40, 24), (2, 4, 17, 33), (1, 4, 8, 8)])
def test_blending_reproduces_a_local_decoder_exactly(shape: tuple[int, ...]) -> None:
    import torch

    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    tiled = tiled_decode(upsample, latents, tile=8, overlap=3, factor=8)
    torch.testing.assert_close(tiled, upsample(latents), rtol=0, atol=1e-6)


def test_plan_tiles_above_the_side_or_over_the_budget() -> None:
    shape = DecodeShape(factor=8, base_channels=128)
    assert plan_tile(VaeTiling(above_side=1536), shape, (1, 4, 128, 128)) is None  # 1024 px
    assert plan_tile(VaeTiling(above_side=1536), shape, (1, 4, 256, 256)) == TilePlan(64, 16)
    at_1024 = decode_peak_bytes(1, 128, 128, factor=8, base_channels=128)
    assert at_1024 == 8 * 128 * 1024 * 1024 * 4  # 4 GiB: eight full-resolution fp32 tensors
    fits = VaeTiling(above_side=0, budget_mb=at_1024 // 2**20)
    assert plan_tile(fits, shape, (1, 4, 128, 128)) is None
    tight = VaeTiling(above_side=0, budget_mb=64)
    # Halved from 512 px until one tile's estimate fits 64 MiB; the overlap a quarter of it.
    assert plan_tile(tight, shape, (1, 4, 128, 128)) == TilePlan(16, 4)
    assert decode_peak_bytes(1, 16, 16, factor=8, base_channels=128) <= 64 * 2**20


def test_the_onnx_graphs_quadratic_attention_counts() -> None:
    torch_vae = DecodeShape(factor=8, base_channels=128)
    onnx_vae = DecodeShape(factor=8, base_channels=128, quadratic_attention=True)
    # At 2048 px the (h*w)^2 scores alone are 2 x 16 GiB.
    extra = onnx_vae.peak_bytes(1, 256, 256) - torch_vae.peak_bytes(1, 256, 256)
    assert extra == 2 * (256 * 256) ** 2 * 4


@pytest.fixture(scope="module")
def latents(sd_folder: Path) -> torch.Tensor:
    """An image's latents (a smooth scene, not noise) through the fixture VAE."""
    import torch
    from PIL import Image

    from stageflow.inference import denoise
    from stageflow.inference.sd_parts import load_torch_parts

    parts = load_torch_parts(sd_folder)
    y, x = np.mgrid[0:256, 0:384]
    scene = np.stack([x % 97 * 2.6, y % 83 * 3.0, (x + y) % 128 * 2.0], -1).astype(np.uint8)
    with torch.inference_mode():
        return denoise.encode_image(parts, Image.fromarray(scene), torch.Generator().manual_seed(0))


def test_tiled_decode_is_close_to_whole_and_to_diffusers_tiling(
    sd_folder: Path, latents: torch.Tensor
) -> None:
    import torch
    from diffusers import AutoencoderKL

    from stageflow.inference import denoise
    from stageflow.inference.sd_parts import load_torch_parts

    parts = load_torch_parts(sd_folder)
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae", low_cpu_mem_usage=False).eval()
    vae.enable_tiling()  # 128 px tiles (the VAE's sample_size), a quarter overlap
    with torch.inference_mode():
        whole = denoise.decode_latents(parts, latents)
        tiled = denoise.decode_latents(
            parts, latents, VaeTiling(above_side=64, tile_side=128, overlap=32)
        )
        large = denoise.decode_latents(
            parts, latents, VaeTiling(above_side=64, tile_side=256, overlap=64)
        )
        theirs = vae.tiled_decode(latents / parts.scaling_factor, return_dict=False)[0]
    assert tiled.shape == whole.shape == (1, 3, 256, 384)
    assert not torch.equal(tiled, whole)  # it did tile
    assert psnr(tiled, whole) >= TILED_MIN_PSNR_DB
    assert psnr(tiled, whole) >= psnr(theirs, whole) - 0.5
    assert psnr(large, whole) >= LARGE_TILES_MIN_PSNR_DB


def test_a_budget_the_whole_decode_exceeds_tiles_it_in_a_run(sd_folder: Path) -> None:
    """The reference workflow's out-of-memory decode: with a budget the whole
    decode would exceed, the stage decodes in tiles instead of failing."""
    from stageflow.inference.diffusion import Txt2ImgModel
    from stageflow.inference.interface import StageInputs, Txt2ImgParams

    whole_bytes = decode_peak_bytes(1, 24, 32, factor=8, base_channels=8)  # 12 MiB
    budget = VaeTiling(above_side=0, budget_mb=5, tile_side=256, overlap=64)
    assert whole_bytes > budget.budget_mb * 2**20
    params = Txt2ImgParams(prompt="hero", steps=3, seed=2, width=256, height=192)
    images = {}
    for name, tiling in (("whole", VaeTiling(above_side=0)), ("budget", budget)):
        model = Txt2ImgModel(sd_folder, vae_tiling=tiling)
        model.load()
        calls: list[tuple[int, ...]] = []
        decode = model.parts.decode_latents

        def counted(
            z: torch.Tensor, decode: Any = decode, calls: list[tuple[int, ...]] = calls
        ) -> torch.Tensor:
            calls.append(tuple(z.shape))
            return decode(z)

        model.parts.decode_latents = counted
        images[name] = np.asarray(
            model.run(params, StageInputs(), lambda i, n: None, lambda: False)
        )
        assert len(calls) == (1 if name == "whole" else 6), calls
        model.unload()
    assert images["budget"].shape == images["whole"].shape == (192, 256, 3)
    mse = np.mean((images["budget"].astype(float) - images["whole"].astype(float)) ** 2)
    # Measured: 34.5 dB (tiles halved to 128 px to fit 5 MiB, 32 px overlap).
    assert 10 * np.log10(255.0**2 / mse) >= TILED_MIN_PSNR_DB
