"""Upscale stage: tiling matches whole-image inference, Lanczos is Pillow's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import StageInputs, UpscaleMode, UpscaleParams

if TYPE_CHECKING:
    from stageflow.inference.upscaler import EsrganUpscaler


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def upscale(model: EsrganUpscaler, image: Image.Image, **kwargs: object) -> np.ndarray:
    params = UpscaleParams(**kwargs)  # type: ignore[arg-type]
    out = model.run(params, StageInputs(image=image), lambda i, n: None, lambda: False)
    return np.asarray(out).astype(np.int16)


def test_tiled_equals_untiled_when_overlap_covers_receptive_field(
    upscaler: EsrganUpscaler, esrgan_folder: Path
) -> None:
    from stageflow.inference.rrdbnet import read_config, receptive_radius

    image = noise_image(70, 52)
    whole = upscale(upscaler, image, tile_size=0)
    overlap = receptive_radius(read_config(esrgan_folder))
    tiled = upscale(upscaler, image, tile_size=24, tile_overlap=overlap)
    # Only float summation order differs: at most one 8-bit level, rarely.
    assert np.abs(tiled - whole).max() <= 1
    assert (tiled != whole).mean() < 0.001
    # Without overlap the seams show: the comparison above can fail.
    seams = upscale(upscaler, image, tile_size=24, tile_overlap=0)
    assert np.abs(seams - whole).max() > 1


def test_output_follows_the_input(upscaler: EsrganUpscaler) -> None:
    image = noise_image(32, 32, seed=1)
    out = upscale(upscaler, image, tile_size=0)
    nearest = np.asarray(image.resize((128, 128), Image.Resampling.NEAREST)).astype(np.int16)
    other = np.asarray(noise_image(32, 32, seed=2).resize((128, 128), Image.Resampling.NEAREST))
    assert np.abs(out - nearest).mean() < np.abs(out - other).mean()


def test_lanczos_mode_is_pillows_lanczos(upscaler: EsrganUpscaler) -> None:
    image = noise_image(37, 21)
    out = upscaler.run(
        UpscaleParams(mode=UpscaleMode.LANCZOS),
        StageInputs(image=image),
        lambda i, n: None,
        lambda: False,
    )
    assert out.tobytes() == image.resize((148, 84), Image.Resampling.LANCZOS).tobytes()


def test_tile_grid_covers_every_pixel_once() -> None:
    from stageflow.inference.upscaler import tile_grid

    coverage = np.zeros((50, 70), dtype=int)
    for tile in tile_grid(70, 50, 32, 8):
        left, top, right, bottom = tile.core
        coverage[top:bottom, left:right] += 1
        pl, pt, pr, pb = tile.padded
        assert pl <= left and pt <= top and pr >= right and pb >= bottom
        assert pl >= 0 and pt >= 0 and pr <= 70 and pb <= 50
    assert (coverage == 1).all()


def test_state_dict_uses_real_esrgan_names() -> None:
    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig

    keys = set(RRDBNet(RRDBNetConfig(num_feat=4, num_block=2, num_grow_ch=2)).state_dict())
    expected = {"conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
    for n in range(2):
        for rdb in (1, 2, 3):
            expected |= {f"body.{n}.rdb{rdb}.conv{c}" for c in range(1, 6)}
    assert keys == {f"{name}.{p}" for name in expected for p in ("weight", "bias")}


def test_loads_a_real_esrgan_release_pth(tmp_path: Path, esrgan_folder: Path) -> None:
    import torch

    from stageflow.inference.rrdbnet import load_rrdbnet

    # Real-ESRGAN ships `{"params_ema": state_dict}` in a .pth beside no safetensors.
    net, _ = load_rrdbnet(esrgan_folder)
    (tmp_path / "config.json").write_bytes((esrgan_folder / "config.json").read_bytes())
    torch.save({"params_ema": net.state_dict()}, tmp_path / "RealESRGAN_x4plus.pth")
    loaded, _ = load_rrdbnet(tmp_path)
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))


def test_missing_image_is_an_invalid_argument(upscaler: EsrganUpscaler) -> None:
    with pytest.raises(InvalidArgument) as err:
        upscaler.validate_inputs(UpscaleParams(), StageInputs())
    assert err.value.field == "image"


def test_rejects_input_larger_than_max_side(esrgan_folder: Path) -> None:
    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(esrgan_folder, max_side=64)
    model.load()
    model.validate_inputs(UpscaleParams(), StageInputs(image=Image.new("RGB", (64, 10))))
    with pytest.raises(InvalidArgument) as err:
        model.validate_inputs(UpscaleParams(), StageInputs(image=Image.new("RGB", (65, 10))))
    assert err.value.field == "image"


def test_rejects_tiny_tiles(upscaler: EsrganUpscaler) -> None:
    with pytest.raises(InvalidArgument) as err:
        upscaler.validate(UpscaleParams(tile_size=8))
    assert err.value.field == "tile_size"


def test_demo_size_upscales_to_512(upscaler: EsrganUpscaler) -> None:
    out = upscaler.run(
        UpscaleParams(), StageInputs(image=noise_image(128, 128)), lambda i, n: None, lambda: False
    )
    assert out.size == (512, 512)


def test_a_batch_of_different_sizes_equals_each_single_run(upscaler: EsrganUpscaler) -> None:
    import torch

    from stageflow.inference.upscaler import tile_grid

    torch.set_num_threads(1)
    images = [noise_image(40, 40, seed=3), noise_image(70, 52, seed=4), noise_image(40, 40, seed=5)]
    params = UpscaleParams(tile_size=32, tile_overlap=8)
    steps: list[tuple[int, int]] = []
    outputs = upscaler.run_batch(
        [params] * 3,
        [StageInputs(image=image) for image in images],
        lambda i, n: steps.append((i, n)),
        lambda: False,
    )
    for image, output in zip(images, outputs, strict=True):
        alone = upscale(upscaler, image, tile_size=32, tile_overlap=8)
        assert np.abs(np.asarray(output.image).astype(np.int16) - alone).max() <= 1
    tiles = sum(len(tile_grid(i.width, i.height, 32, 8)) for i in images)
    # Same-shape tiles of several images went through the network together.
    assert len(steps) < tiles and steps[-1] == (tiles, tiles)


def test_lanczos_is_not_batched_and_mixed_tiling_is_refused(upscaler: EsrganUpscaler) -> None:
    assert upscaler.batch_key(UpscaleParams(mode=UpscaleMode.LANCZOS)) is None
    assert upscaler.batch_key(UpscaleParams(tile_size=32)) != upscaler.batch_key(
        UpscaleParams(tile_size=64)
    )
    with pytest.raises(InvalidArgument, match="tile_size"):
        upscaler.run_batch(
            [UpscaleParams(tile_size=32), UpscaleParams(tile_size=64)],
            [StageInputs(image=noise_image(20, 20))] * 2,
            lambda i, n: None,
            lambda: False,
        )


@pytest.mark.parametrize("channels_last", ["off", "on"])
def test_bf16_and_channels_last_serve_the_fp32_image_within_a_few_levels(
    upscaler: EsrganUpscaler, esrgan_folder: Path, channels_last: str
) -> None:
    """Set, not auto: the network casts to bf16 and runs in either memory format;
    the stage still gives float32 tiles in and blends them in float32."""
    import torch

    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(esrgan_folder, dtype="bf16", channels_last=channels_last)
    model.load()
    try:
        net = model.net.net  # type: ignore[attr-defined]
        assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
        first = next(p for p in net.parameters() if p.dim() == 4)
        layout = torch.channels_last if channels_last == "on" else torch.contiguous_format
        assert first.is_contiguous(memory_format=layout)
        assert (model.identity.dtype, model.identity.channels_last) == (
            "bf16",
            channels_last == "on",
        )
        image = noise_image(40, 24, seed=3)
        fp32 = upscale(upscaler, image, tile_size=0)
        ours = upscale(model, image, tile_size=0)
        tiled = upscale(model, image, tile_size=24, tile_overlap=8)
    finally:
        model.unload()
    assert ours.shape == fp32.shape == (96, 160, 3)
    # bf16 keeps 8 bits of mantissa: a few levels at most, most pixels exact.
    assert np.abs(ours - fp32).max() <= 8
    assert (ours != fp32).mean() < 0.5
    mse = float(((ours - fp32).astype(np.float64) ** 2).mean())
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 40
    assert tiled.shape == ours.shape
