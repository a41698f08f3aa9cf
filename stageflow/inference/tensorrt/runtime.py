"""TensorRT parts over an ONNX export folder: `DiffusionParts` and an upscaler.

Optimization profiles cover batch 1 to `max_batch` images (twice that for
the UNet under classifier-free guidance) and image sides from the model's
size multiple to `max_side`, optimized for `opt_side`. The tokenizer and the
scheduler are the ONNX backend's: the loop and its arithmetic are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.onnx import layout
from stageflow.inference.onnx.runtime import tokenizer_fn
from stageflow.inference.scheduler import scheduler_factory
from stageflow.inference.sd_parts import DiffusionParts, text_conditioner
from stageflow.inference.tensorrt.engine import EngineRunner, Profile, ShapeRange, load_engine


@dataclass(frozen=True)
class ProfileSpec:
    min_side: int = 64
    opt_side: int = 512
    max_side: int = 1024
    max_batch: int = 1


def _device(device: str) -> torch.device:
    dev = torch.device("cuda" if device == "cpu" else device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise FailedPrecondition(f"the tensorrt backend needs a CUDA device, got {device!r}")
    return dev


def _runner(
    folder: Path,
    manifest: layout.OnnxManifest,
    part: str,
    profile: Profile,
    dev: torch.device,
    cache_dir: Path | None,
) -> EngineRunner:
    onnx_path = manifest.part(folder, part)
    digest = manifest.files[onnx_path.name]
    fp16 = bool(manifest.settings.get("fp16"))
    engine, _ = load_engine(onnx_path, digest, profile, fp16=fp16, cache_dir=cache_dir)
    return EngineRunner(engine, dev)


def _range(batches: tuple[int, int, int], *dims: tuple[int, int, int]) -> ShapeRange:
    """(min, opt, max) shapes from a (min, opt, max) batch and (min, opt, max) per dim."""
    lo, opt, hi = (tuple([batches[i], *(d[i] for d in dims)]) for i in range(3))
    return lo, opt, hi


def fixed(n: int) -> tuple[int, int, int]:
    return (n, n, n)


def sd_profiles(config: dict[str, int], spec: ProfileSpec) -> dict[str, Profile]:
    f, c = int(config["vae_scale_factor"]), int(config["latent_channels"])
    length, hidden = int(config["max_token_length"]), int(config["text_hidden_size"])
    side = (spec.min_side // f, spec.opt_side // f, spec.max_side // f)
    pixels = (side[0] * f, side[1] * f, side[2] * f)
    one = (1, 1, spec.max_batch)
    # Classifier-free guidance runs (negative, positive) as one batch.
    guided = (1, 2, 2 * spec.max_batch)
    return {
        layout.TEXT_ENCODER: Profile({"input_ids": _range(guided, fixed(length))}),
        layout.UNET: Profile(
            {
                "sample": _range(guided, fixed(c), side, side),
                "timestep": ((1,), (1,), (1,)),
                "encoder_hidden_states": _range(guided, fixed(length), fixed(hidden)),
            }
        ),
        layout.VAE_ENCODER: Profile({"image": _range(one, fixed(3), pixels, pixels)}),
        layout.VAE_DECODER: Profile({"latents": _range(one, fixed(c), side, side)}),
    }


def load_trt_parts(
    folder: Path,
    device: str = "cuda",
    spec: ProfileSpec | None = None,
    cache_dir: Path | None = None,
) -> DiffusionParts:
    """`cache_dir`: the engine cache (None: `engine.default_cache_dir()`)."""
    folder = Path(folder)
    dev = _device(device)
    manifest = layout.read_manifest(folder, verify=False)
    if manifest.kind != layout.KIND_SD:
        raise FailedPrecondition(f"{folder} holds a {manifest.kind} export, not Stable Diffusion")
    profiles = sd_profiles(manifest.config, spec or ProfileSpec())
    runners = {
        p: _runner(folder, manifest, p, profiles[p], dev, cache_dir) for p in layout.SD_PARTS
    }
    unet = runners[layout.UNET]
    cfg = manifest.config
    tokenize = tokenizer_fn(folder / "tokenizer", int(cfg["max_token_length"]))
    encode_text = runners[layout.TEXT_ENCODER]
    return DiffusionParts(
        tokenize=tokenize,
        encode_text=encode_text,
        condition=text_conditioner(tokenize, encode_text),
        predict_noise=lambda sample, t, cond: unet(sample, t.reshape(1).float(), cond.text),
        encode_image=runners[layout.VAE_ENCODER],
        decode_latents=runners[layout.VAE_DECODER],
        new_scheduler=scheduler_factory(folder / "scheduler"),
        latent_channels=int(cfg["latent_channels"]),
        scaling_factor=float(cfg["scaling_factor"]),
        vae_scale_factor=int(cfg["vae_scale_factor"]),
        unet_levels=int(cfg["unet_levels"]),
        device=dev,
    )


def load_trt_upscaler(
    folder: Path,
    device: str = "cuda",
    spec: ProfileSpec | None = None,
    cache_dir: Path | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """Tiles are at most `max_side` (the tile size plus twice the overlap);
    `cache_dir`: the engine cache (None: `engine.default_cache_dir()`)."""
    folder = Path(folder)
    dev = _device(device)
    manifest = layout.read_manifest(folder, verify=False)
    if manifest.kind != layout.KIND_ESRGAN:
        raise FailedPrecondition(f"{folder} holds a {manifest.kind} export, not an upscaler")
    # Edge tiles can be a few pixels wide; the opt shape is a 128 tile with 24 overlap.
    s = spec or ProfileSpec(min_side=1, opt_side=176, max_side=512)
    profile = Profile(
        {
            "image": (
                (1, 3, s.min_side, s.min_side),
                (1, 3, s.opt_side, s.opt_side),
                (s.max_batch, 3, s.max_side, s.max_side),
            )
        }
    )
    net = _runner(folder, manifest, layout.UPSCALER, profile, dev, cache_dir)
    return net, int(manifest.config["scale"])
