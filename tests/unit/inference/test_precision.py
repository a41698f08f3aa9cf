"""The dtype setting: bf16/fp16 weights on CPU, fp32 loop, fingerprint and cache key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from stageflow.inference import precision
from stageflow.inference.interface import StageInputs, Txt2ImgParams

if TYPE_CHECKING:
    from stageflow.inference.diffusion import Txt2ImgModel

# bf16 keeps 8 bits of mantissa. Measured on the fixture (seed 5, 64 px, 4 steps,
# one thread): 46.9 dB from fp32 (fp16: 58.3 dB); the bound leaves room for kernels.
BF16_MIN_PSNR_DB = 35.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(model: Txt2ImgModel) -> np.ndarray:
    params = Txt2ImgParams(prompt="epic game hero portrait", steps=4, seed=5, width=64, height=64)
    return np.asarray(model.run(params, StageInputs(), lambda i, n: None, lambda: False))


@pytest.fixture(scope="module")
def bf16_txt2img(sd_folder: Path) -> Iterator[Txt2ImgModel]:
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(sd_folder, dtype="bf16")
    model.load()
    yield model
    model.unload()


def test_bf16_runs_on_cpu_close_to_fp32(txt2img: Txt2ImgModel, bf16_txt2img: Txt2ImgModel) -> None:
    import torch

    unet = bf16_txt2img.parts.predict_noise.__closure__
    assert unet is not None
    weights = [c.cell_contents for c in unet if isinstance(c.cell_contents, torch.nn.Module)]
    assert weights and all(p.dtype == torch.bfloat16 for p in weights[0].parameters())
    ours, reference = run(bf16_txt2img), run(txt2img)
    assert not np.array_equal(ours, reference)  # bf16 did run: the rounding shows
    assert psnr(ours, reference) >= BF16_MIN_PSNR_DB


def test_the_seed_means_the_same_noise_in_every_dtype(
    txt2img: Txt2ImgModel, bf16_txt2img: Txt2ImgModel
) -> None:
    """Latents are drawn in float32 and the loop stays float32: bf16 is the
    same image, up to the parts' rounding (an unrelated seed is far off)."""
    import torch

    other = Txt2ImgParams(prompt="epic game hero portrait", steps=4, seed=6, width=64, height=64)
    assert bf16_txt2img.parts.dtype == txt2img.parts.dtype == torch.float32
    assert bf16_txt2img.parts.weights_dtype == "bf16"
    far = np.asarray(txt2img.run(other, StageInputs(), lambda i, n: None, lambda: False))
    assert psnr(run(bf16_txt2img), run(txt2img)) > psnr(far, run(txt2img)) + 10


def test_dtype_is_reported_and_changes_the_fingerprint(
    txt2img: Txt2ImgModel, bf16_txt2img: Txt2ImgModel
) -> None:
    fp32, bf16 = txt2img.describe().identity, bf16_txt2img.describe().identity
    assert (fp32.dtype, bf16.dtype) == ("fp32", "bf16")
    assert bf16.fingerprint == precision.with_dtype(fp32.fingerprint, "bf16")
    assert bf16.fingerprint != fp32.fingerprint


def test_the_stage_cache_key_differs_by_dtype(
    txt2img: Txt2ImgModel, bf16_txt2img: Txt2ImgModel
) -> None:
    from stageflow.orchestrator.cache import cache_key
    from stageflow.stage.codec import model_info
    from stageflow.v1 import stage_pb2

    run_request = stage_pb2.RunRequest()
    fp32 = model_info(txt2img.describe().identity)
    bf16 = model_info(bf16_txt2img.describe().identity)
    assert bf16.dtype == "bf16"
    assert cache_key("base", fp32, run_request) != cache_key("base", bf16, run_request)


def test_fp16_keeps_a_force_upcast_vae_in_fp32(sd_folder: Path) -> None:
    import torch

    from stageflow.inference.sd_parts import load_torch_parts

    parts = load_torch_parts(sd_folder, dtype="fp16")
    # The encode's closure holds the VAE itself (the decode's may hold a compiled
    # wrapper of it: stageflow.inference.compiled); one VAE serves both.
    encoder = parts.encode_image.__closure__
    assert encoder is not None
    vaes = [c.cell_contents for c in encoder if isinstance(c.cell_contents, torch.nn.Module)]
    assert vaes and next(vaes[0].parameters()).dtype == torch.float32
    image = parts.decode_latents(torch.zeros(1, 4, 8, 8))
    assert image.dtype == torch.float32 and torch.isfinite(image).all()


def test_an_unknown_dtype_fails_at_construction(sd_folder: Path) -> None:
    from stageflow.inference.diffusion import Txt2ImgModel

    with pytest.raises(ValueError, match="dtype must be one of fp32, fp16, bf16"):
        Txt2ImgModel(sd_folder, dtype="int8")


def _modules(fn: object, seen: set[int] | None = None) -> list[Any]:
    """The torch modules a part's function reaches through its closures (and the
    functions and lists in them): what it actually computes with."""
    import torch

    seen = seen if seen is not None else set()
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    if isinstance(fn, torch.nn.Module):
        return [fn]
    if isinstance(fn, list | tuple):
        return [m for item in fn for m in _modules(item, seen)]
    cells = getattr(fn, "__closure__", None) or ()
    return [m for c in cells for m in _modules(c.cell_contents, seen)]


def _weight_dtypes(fn: object) -> set[Any]:
    return {p.dtype for m in _modules(fn) for p in m.parameters()}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_bf16_runs_text_encoders_unet_and_vae_in_bf16(
    family: str, sd_folder: Path, sdxl_folder: Path
) -> None:
    import torch

    from stageflow.inference.sd_parts import load_torch_parts

    parts = load_torch_parts(sd_folder if family == "sd" else sdxl_folder, dtype="bf16")
    assert parts.weights_dtype == "bf16"
    for name in ("condition", "encode_text", "predict_noise", "decode_latents", "encode_image"):
        assert _weight_dtypes(getattr(parts, name)) == {torch.bfloat16}, name
    # Outputs come back in the loop's float32.
    cond = parts.condition("a red circle", "", True, (64, 64))
    assert cond.text.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in cond.added.values())
    sample = torch.zeros(2, parts.latent_channels, 8, 8)
    assert parts.predict_noise(sample, torch.tensor(999), cond).dtype == torch.float32
    assert parts.decode_latents(sample[:1]).dtype == torch.float32


def _auto(folder: Path, family: str = "sd-txt2img") -> Any:
    from stageflow.inference import registry

    model = registry.create_model(family, folder, dtype="auto")
    model.load()
    return model


def test_auto_on_this_cpu_serves_what_its_flags_say(sd_folder: Path, txt2img: Txt2ImgModel) -> None:
    from stageflow.inference import hardware
    from stageflow.inference.base import weight_bytes

    expected = hardware.choose_cast_dtype(
        "auto", hardware.detect(), weight_bytes=weight_bytes(sd_folder)
    )
    model = _auto(sd_folder)
    try:
        identity = model.describe().identity
        assert identity.dtype == expected.dtype
        assert model.parts.weights_dtype == expected.dtype
    finally:
        model.unload()
    assert (identity.dtype_setting, identity.dtype_reason) == ("auto", expected.reason)
    assert identity.cpu_features == expected.cpu_features
    fp32 = txt2img.describe().identity
    assert identity.fingerprint == precision.with_dtype(fp32.fingerprint, identity.dtype)
    assert (fp32.dtype_setting, fp32.dtype_reason) == ("fp32", "set: dtype=fp32")


@pytest.mark.parametrize(
    ("flags", "capability", "min_weights", "dtype"),
    [
        # The fixture counts as big enough here, to load bf16 weights through auto.
        ("avx512f avx512_bf16", "AVX512", 0, "bf16"),
        # At the real threshold its 5 MiB of weights keep fp32 on the same CPU.
        ("avx512f avx512_bf16", "AVX512", None, "fp32"),
        ("avx2 fma", "AVX2", 0, "fp32"),
    ],
)
def test_auto_follows_the_cpu_and_the_fingerprint_the_resolved_dtype(
    monkeypatch: pytest.MonkeyPatch,
    sd_folder: Path,
    txt2img: Txt2ImgModel,
    flags: str,
    capability: str,
    min_weights: int | None,
    dtype: str,
) -> None:
    """auto on a CPU without bf16 (or for a model too small for bf16) is fp32 down
    to the cache key: it shares the fp32 stage's cache entries; with bf16 it
    shares the bf16 stage's."""
    from stageflow.inference import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags.split()))
    monkeypatch.setattr(hardware, "torch_capability", lambda: capability)
    if min_weights is not None:
        from stageflow.inference.base import LocalModel

        rule = hardware.AutoBf16(min_weight_bytes=min_weights)
        monkeypatch.setattr(LocalModel, "auto_bf16", rule)
    model = _auto(sd_folder)
    try:
        identity = model.describe().identity
        weights = _weight_dtypes(model.parts.predict_noise)
    finally:
        model.unload()
    assert identity.dtype == dtype
    assert {str(w) for w in weights} == {"torch.bfloat16" if dtype == "bf16" else "torch.float32"}
    fp32 = txt2img.describe().identity
    assert identity.fingerprint == precision.with_dtype(fp32.fingerprint, dtype)
    assert (identity.fingerprint == fp32.fingerprint) == (dtype == "fp32")


@pytest.mark.parametrize(
    ("flags", "dtype", "layout"),
    [(("amx_tile", "amx_bf16", "avx512f", "avx512_bf16"), "bf16", True),
     (("avx512f", "avx512_bf16"), "fp32", True)],
)  # fmt: skip
def test_auto_serves_the_torch_upscaler_in_bf16_with_amx_only(
    esrgan_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    dtype: str,
    layout: bool,
) -> None:
    """Whatever its size (the fixture is 0.2 MiB); channels_last on in either dtype."""
    import torch

    from stageflow.inference import hardware, registry

    monkeypatch.setattr(hardware, "detect", lambda: hardware.CpuBf16(flags, "AVX512"))
    # Both autos, as a stage process sets them (in process the layout defaults to off).
    model = registry.create_model("esrgan", esrgan_folder, dtype="auto", channels_last="auto")
    model.load()
    try:
        identity = model.describe().identity
        net = model.net.net  # type: ignore[attr-defined]
    finally:
        model.unload()
    assert (identity.dtype, identity.dtype_setting, identity.channels_last) == (
        dtype,
        "auto",
        layout,
    )
    assert {p.dtype for p in net.parameters()} == {
        torch.bfloat16 if dtype == "bf16" else torch.float32
    }
    if dtype == "fp32":
        assert "takes bf16 with amx_bf16" in identity.dtype_reason
