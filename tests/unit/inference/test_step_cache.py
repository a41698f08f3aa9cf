"""Step caching (DeepCache): our partial UNet forward, the loop's fewer full
calls, and the stage's cache_interval parameter on the tiny fixtures."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import (
    Box,
    RefineMode,
    RefineParams,
    StageInputs,
    Txt2ImgParams,
)

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel, Txt2ImgModel

PROMPT = "epic game hero portrait"
# PSNR of a cached image against the uncached one, measured on the tiny fixtures
# (random weights; one thread; seed 0) when step caching was written:
#   txt2img tiny-sd 64 px, 8 steps:     interval 2: 49.3 dB, 3: 46.3 dB
#   txt2img tiny-sdxl 64 px, 6 steps:   interval 2: 41.2 dB, 3: 39.2 dB
#   refine tiny-sd img2img, 8 x 0.75:   interval 2: 55.9 dB, 3: 55.9 dB
#   refine tiny-sd inpaint, 8 x 1.0:    interval 2: 48.2 dB, 3: 43.0 dB
# The bounds leave ~4 dB for other kernels; a broken cache (wrong skips, the
# deep features of another step's batch) lands far below (noise: ~10 dB).
MIN_PSNR_DB = {
    ("sd", 2): 45.0,
    ("sd", 3): 42.0,
    ("sdxl", 2): 37.0,
    ("sdxl", 3): 35.0,
    ("img2img", 2): 50.0,
    ("inpaint", 2): 44.0,
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def txt2img_image(model: Txt2ImgModel, **kwargs: Any) -> np.ndarray:
    params = Txt2ImgParams(**{"prompt": PROMPT, "steps": 8, "width": 64, "height": 64, **kwargs})
    return np.asarray(model.run(params, StageInputs(), lambda i, n: None, lambda: False))


def refine_image(model: RefineModel, **kwargs: Any) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    params = RefineParams(**{"prompt": PROMPT, "steps": 8, **kwargs})
    inputs = StageInputs(image=Image.fromarray(pixels))
    return np.asarray(model.run(params, inputs, lambda i, n: None, lambda: False))


def sd15_shaped_unet() -> Any:
    """SD 1.5's UNet layout (four levels, two resnets a level, a plain last down
    block and first up block) at toy widths: the skip bookkeeping of real scale."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def unet_and_conditioning(name: str, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A UNet and a guided batch's conditioning: a loaded fixture model's own
    (SD text states; SDXL's pooled text and base or refiner time ids), or the
    SD 1.5-shaped UNet with random text states."""
    import torch

    from stageflow.inference.sd_parts import Conditioning

    if name == "sd15-shaped":
        text = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(3))
        return sd15_shaped_unet(), Conditioning(text)
    parts = request.getfixturevalue(name).parts
    assert parts.step_cache is not None
    return parts.step_cache.unet, parts.condition(PROMPT, "blurry", True, (64, 64))


@pytest.mark.parametrize("name", ["txt2img", "sdxl_base", "sdxl_refiner", "sd15-shaped"])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])  # (7, 9): upsample sizes forwarded
def test_the_partial_forward_with_nothing_cached_is_the_unet(
    name: str, size: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    import torch

    from stageflow.inference.step_cache import unet_forward

    unet, cond = unet_and_conditioning(name, request)
    sample = torch.randn(
        2, unet.config.in_channels, *size, generator=torch.Generator().manual_seed(4)
    )
    text, added = cond.text, dict(cond.added) or None
    t = torch.tensor(700)
    with torch.inference_mode():
        reference = unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added)[0]
        for depth in range(len(unet.down_blocks)):
            full, deep = unet_forward(unet, sample, t, text, added, depth)
            assert torch.equal(full, reference), depth
            # The shallow branch over this very step's deep features is the same call.
            shallow, _ = unet_forward(unet, sample, t, text, added, depth, deep)
            assert torch.equal(shallow, reference), depth
            # Over another timestep's features it is not.
            _, stale = unet_forward(unet, sample, torch.tensor(100), text, added, depth)
            other, _ = unet_forward(unet, sample, t, text, added, depth, stale)
            assert not torch.equal(other, reference), depth


def test_a_depth_outside_the_unet_is_refused(txt2img: Txt2ImgModel) -> None:
    step_cache = txt2img.parts.step_cache
    assert step_cache is not None and step_cache.levels == 2
    with pytest.raises(ValueError, match=r"down blocks 0\.\.1"):
        step_cache.predictor(2, depth=2)


def test_interval_one_is_todays_image_bit_for_bit(txt2img: Txt2ImgModel) -> None:
    from stageflow.inference import denoise

    # Today's image: the loop with the parts' own UNet call, no step cache in sight.
    original = txt2img.parts
    txt2img._parts = dataclasses.replace(original, step_cache=None)
    try:
        today = txt2img_image(txt2img, seed=5)
    finally:
        txt2img._parts = original
    assert denoise.noise_predictor(original, 1) is original.predict_noise
    assert np.array_equal(txt2img_image(txt2img, seed=5, cache_interval=1), today)
    assert np.array_equal(txt2img_image(txt2img, seed=5), today)


@pytest.fixture
def unet_calls(txt2img: Txt2ImgModel) -> Iterator[dict[str, int]]:
    """How often the UNet's mid block (the deep path) and last up block ran."""
    step_cache = txt2img.parts.step_cache
    assert step_cache is not None
    unet = step_cache.unet
    counts = {"mid": 0, "last_up": 0}

    def counter(name: str) -> Any:
        def hook(*_: Any) -> None:
            counts[name] += 1

        return hook

    handles = [
        unet.mid_block.register_forward_hook(counter("mid")),
        unet.up_blocks[-1].register_forward_hook(counter("last_up")),
    ]
    yield counts
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize(("interval", "full"), [(1, 8), (2, 4), (3, 3), (5, 2), (10, 1)])
def test_a_cached_run_makes_fewer_full_unet_calls(
    txt2img: Txt2ImgModel, unet_calls: dict[str, int], interval: int, full: int
) -> None:
    txt2img_image(txt2img, steps=8, cache_interval=interval)
    # One guided batch per step: the deep path runs on full steps only, the
    # shallow branch on every step.
    assert unet_calls == {"mid": full, "last_up": 8}


@pytest.mark.parametrize("interval", [2, 3])
def test_a_cached_sd_image_differs_but_stays_close(txt2img: Txt2ImgModel, interval: int) -> None:
    uncached = txt2img_image(txt2img, seed=0)
    cached = txt2img_image(txt2img, seed=0, cache_interval=interval)
    assert not np.array_equal(cached, uncached)
    assert psnr(cached, uncached) >= MIN_PSNR_DB["sd", interval]


@pytest.mark.parametrize("interval", [2, 3])
def test_a_cached_sdxl_image_differs_but_stays_close(
    sdxl_base: Txt2ImgModel, interval: int
) -> None:
    """SDXL's added embeddings (pooled text, time ids) go through the partial forward."""
    uncached = txt2img_image(sdxl_base, steps=6)
    cached = txt2img_image(sdxl_base, steps=6, cache_interval=interval)
    assert not np.array_equal(cached, uncached)
    assert psnr(cached, uncached) >= MIN_PSNR_DB["sdxl", interval]


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("img2img", {}), ("inpaint", {"mode": RefineMode.INPAINT, "mask_box": Box(0, 0.5, 1, 1)})],
)
def test_refine_caches_steps_too(refine: RefineModel, mode: str, extra: dict[str, Any]) -> None:
    uncached = refine_image(refine, **extra)
    cached = refine_image(refine, cache_interval=2, **extra)
    assert not np.array_equal(cached, uncached)
    assert psnr(cached, uncached) >= MIN_PSNR_DB[mode, 2]


@pytest.mark.parametrize("value", [0, 11, -1])
def test_an_interval_out_of_range_is_refused_naming_the_field(
    txt2img: Txt2ImgModel, refine: RefineModel, value: int
) -> None:
    with pytest.raises(InvalidArgument, match=r"cache_interval: must be in \[1, 10\]"):
        txt2img.validate(Txt2ImgParams(prompt=PROMPT, width=64, height=64, cache_interval=value))
    with pytest.raises(InvalidArgument, match=r"cache_interval: must be in \[1, 10\]"):
        refine.validate(RefineParams(prompt=PROMPT, cache_interval=value))


def test_describe_offers_the_interval_range_on_torch(
    txt2img: Txt2ImgModel, refine: RefineModel
) -> None:
    assert txt2img.describe().param_ranges["cache_interval"] == (1, 10)
    assert refine.describe().param_ranges["cache_interval"] == (1, 10)


def test_requests_of_different_intervals_never_share_a_batch(
    txt2img: Txt2ImgModel, refine: RefineModel
) -> None:
    one, two = (Txt2ImgParams(prompt=PROMPT, cache_interval=k) for k in (1, 2))
    assert txt2img.batch_key(one) != txt2img.batch_key(two)
    with pytest.raises(InvalidArgument, match="cache_interval"):
        txt2img.run_batch([one, two], [StageInputs()] * 2, lambda i, n: None, lambda: False)
    a, b = (RefineParams(prompt=PROMPT, cache_interval=k) for k in (1, 3))
    assert refine.batch_key(a) != refine.batch_key(b)


def test_a_cached_handoff_equals_the_cached_uninterrupted_run(
    txt2img: Txt2ImgModel, refine: RefineModel
) -> None:
    """Base to 0.8 (8 of 10 steps) then refine from 0.8, both at interval 2:
    the full steps fall where one cached 10-step run has them (0, 2, 4, 6 | 8),
    so the resumed image is that run's, bit for bit."""
    common = {"prompt": PROMPT, "steps": 10, "cache_interval": 2}
    whole = txt2img.run(
        Txt2ImgParams(width=64, height=64, seed=5, **common),  # type: ignore[arg-type]
        StageInputs(),
        lambda i, n: None,
        lambda: False,
    )
    base = txt2img.run_with_report(
        Txt2ImgParams(width=64, height=64, seed=5, denoising_end=0.8, **common),  # type: ignore[arg-type]
        StageInputs(),
        lambda i, n: None,
        lambda: False,
    )
    assert base.latents is not None
    resumed = refine.run(
        RefineParams(denoising_start=0.8, **common),  # type: ignore[arg-type]
        StageInputs(latents=base.latents),
        lambda i, n: None,
        lambda: False,
    )
    assert np.array_equal(np.asarray(resumed), np.asarray(whole))
    uncached = txt2img_image(txt2img, steps=10, seed=5)
    assert not np.array_equal(np.asarray(whole), uncached)
