"""The compile and channels_last settings where nothing compiles: refusals,
step caching's eager path, channels_last eager (tests/integration/test_compile.py
compiles, which starts the C++ compiler: not in this tier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.interface import StageInputs, Txt2ImgParams

if TYPE_CHECKING:
    from stageflow.inference.diffusion import Txt2ImgModel

PROMPT = "epic game hero portrait"
# channels_last picks other conv kernels, which sum in another order: on the
# tiny fixture (64 px, 4 steps of 8, one thread, latents up to ~17) the latents
# differed by at most 2.1e-5 when this was written (3.3e-5 after 7 steps),
# about 1e-6 of their range: float32 rounding. The bound leaves 5x; a wrong
# layout (channels read as pixels) is of the order of the latents themselves.
CHANNELS_LAST_ATOL = 1e-4


def latents(model: Txt2ImgModel, **kwargs: Any) -> np.ndarray:
    """Half of an 8-step schedule's latents (no VAE decode)."""
    params = Txt2ImgParams(
        **{"prompt": PROMPT, "steps": 8, "width": 64, "height": 64, "denoising_end": 0.5, **kwargs}
    )
    out = model.run_with_report(params, StageInputs(), lambda i, n: None, lambda: False)
    assert out.latents is not None
    return out.latents.array


def loaded(folder: Path, **kwargs: Any) -> Iterator[Txt2ImgModel]:
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(folder, **kwargs)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="module")
def inductor(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    """compile=inductor, never called at a shape the tests here would compile."""
    yield from loaded(sd_folder, compile="inductor")


@pytest.fixture(scope="module")
def channels_last(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    yield from loaded(sd_folder, channels_last=True)


def test_the_identity_reports_the_settings(
    inductor: Txt2ImgModel, channels_last: Txt2ImgModel, txt2img: Txt2ImgModel
) -> None:
    assert (inductor.identity.compile, inductor.identity.channels_last) == ("inductor", False)
    assert (channels_last.identity.compile, channels_last.identity.channels_last) == ("off", True)
    assert (txt2img.identity.compile, txt2img.identity.channels_last) == ("off", False)
    # Not folded into the fingerprint: the same weights, float ops reordered.
    assert inductor.identity.fingerprint == txt2img.identity.fingerprint


def test_step_caching_runs_eager_with_compile_on(
    inductor: Txt2ImgModel, txt2img: Txt2ImgModel
) -> None:
    """cache_interval > 1 drives the uncompiled UNet block by block: nothing
    compiles (a compile would start the C++ compiler, which this tier refuses:
    ProcessStarted) and the latents are the eager model's, bit for bit."""
    from torch._dynamo.utils import counters

    from stageflow.inference.compiled import compile_seconds

    before = dict(counters["frames"])
    cached = latents(inductor, cache_interval=2)
    assert dict(counters["frames"]) == before
    assert compile_seconds(inductor.parts) == {}
    np.testing.assert_array_equal(cached, latents(txt2img, cache_interval=2))


def test_channels_last_puts_the_unet_and_vae_in_that_format(
    channels_last: Txt2ImgModel, txt2img: Txt2ImgModel
) -> None:
    import torch

    unet = channels_last.parts.step_cache.unet  # type: ignore[union-attr]
    weight = unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    plain = txt2img.parts.step_cache.unet.conv_in.weight  # type: ignore[union-attr]
    assert plain.is_contiguous()
    # Same numbers up to kernel summation order, and the decode too.
    np.testing.assert_allclose(
        latents(channels_last), latents(txt2img), rtol=0, atol=CHANNELS_LAST_ATOL
    )
    params = Txt2ImgParams(prompt=PROMPT, steps=4, width=64, height=64)
    a = np.asarray(channels_last.run(params, StageInputs(), lambda i, n: None, lambda: False))
    b = np.asarray(txt2img.run(params, StageInputs(), lambda i, n: None, lambda: False))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("options", "named"),
    [({"compile": "inductor"}, "compile inductor"), ({"channels_last": True}, "channels_last")],
)
def test_exported_graph_backends_refuse_the_settings_at_load(
    sd_folder: Path, options: dict[str, Any], named: str
) -> None:
    from stageflow.inference.diffusion import Txt2ImgModel

    # Refused before the folder is read: any folder shows it.
    model = Txt2ImgModel(sd_folder, backend="onnxruntime", **options)
    with pytest.raises(FailedPrecondition, match=f"{named}: the onnxruntime backend") as err:
        model.load()
    assert "torch backend" in str(err.value)
    assert not model.loaded


def test_the_torch_upscaler_refuses_compile(esrgan_folder: Path) -> None:
    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(esrgan_folder, compile="inductor")
    with pytest.raises(FailedPrecondition, match="upscaler runs eager"):
        model.load()


def test_an_unknown_compile_mode_is_refused_at_construction(sd_folder: Path) -> None:
    from stageflow.inference.diffusion import Txt2ImgModel

    with pytest.raises(ValueError, match="compile must be one of off, inductor"):
        Txt2ImgModel(sd_folder, compile="cudagraphs")


def test_channels_last_auto_is_on_for_real_size_diffusion_models_only() -> None:
    from stageflow.inference.compiled import CHANNELS_LAST_MIN_WEIGHT_BYTES, choose_channels_last

    big, small = CHANNELS_LAST_MIN_WEIGHT_BYTES, CHANNELS_LAST_MIN_WEIGHT_BYTES - 1
    assert choose_channels_last("auto", True, big) == (
        True,
        "auto: on, weights 256 MiB (on from 256 MiB)",
    )
    assert choose_channels_last("auto", True, small)[0] is False
    assert choose_channels_last("auto", True, None)[0] is False
    on, reason = choose_channels_last("auto", False, big)
    assert (on, reason) == (False, "auto: off, no eager torch UNet or VAE here")
    assert choose_channels_last("on", True, 0) == (True, "set: channels_last=on")
    assert choose_channels_last("off", True, big) == (False, "set: channels_last=off")
    with pytest.raises(ValueError, match="channels_last must be one of auto, on, off"):
        choose_channels_last("sometimes", True, big)


def test_channels_last_auto_weighs_the_folder_at_load(
    sd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from stageflow.inference import compiled

    # The fixture's few MiB: auto stays off, the layout its golden images use.
    for model in loaded(sd_folder, channels_last="auto"):
        assert model.identity.channels_last is False
    # Any folder counts as real size when the threshold is lowered: auto turns it on.
    monkeypatch.setattr(compiled, "CHANNELS_LAST_MIN_WEIGHT_BYTES", 0)
    for model in loaded(sd_folder, channels_last="auto"):
        assert model.identity.channels_last is True
        unet = model.parts.step_cache.unet  # type: ignore[union-attr]
        weight = unet.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_auto_turns_it_on_for_the_torch_upscaler(esrgan_folder: Path) -> None:
    from stageflow.inference.upscaler import EsrganUpscaler

    model = EsrganUpscaler(esrgan_folder, channels_last="auto")
    model.load()  # in fp32 too: bench/upscale_dtype.py
    assert model.identity.channels_last is True
    assert model.describe().identity.channels_last is True
    model.unload()
    model = EsrganUpscaler(esrgan_folder, channels_last="off")
    model.load()
    assert model.identity.channels_last is False
    model.unload()
    with pytest.raises(FailedPrecondition, match="upscaler runs eager"):
        EsrganUpscaler(esrgan_folder, compile="inductor").load()
