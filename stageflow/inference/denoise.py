"""Our own denoise loop over `DiffusionParts`, step for step like diffusers.

The order of random draws and the arithmetic follow diffusers'
StableDiffusionPipeline / Img2ImgPipeline, so the same folder, seed and
settings give the same image (a parity test holds us to it). The loop stays in
Python; the heavy parts it calls may be compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from stageflow.inference.base import check_cancelled
from stageflow.inference.interface import CancelledFn, ProgressFn
from stageflow.inference.sd_parts import Conditioning, DiffusionParts, NoiseFn
from stageflow.inference.vae_tiling import DecodeShape, VaeTiling, plan_tile, tiled_decode

# (step index, latents after the scheduler step) -> latents to carry on with
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]


def seeded_generator(seed: int) -> torch.Generator:
    # Always a CPU generator: the same seed gives the same noise on any device.
    return torch.Generator("cpu").manual_seed(seed)


def randn(shape: tuple[int, ...] | torch.Size, gen: torch.Generator, parts: DiffusionParts) -> Any:
    return torch.randn(tuple(shape), generator=gen, dtype=parts.dtype).to(parts.device)


def uses_guidance(guidance_scale: float) -> bool:
    return guidance_scale > 1.0


def encode_prompts(
    parts: DiffusionParts,
    prompt: str,
    negative_prompt: str,
    guided: bool,
    size: tuple[int, int],
) -> Conditioning:
    """The UNet's conditioning for an output of `size` (height, width) pixels;
    with guidance, (negative, positive) stacked as batch 2."""
    return parts.condition(prompt, negative_prompt, guided, size)


def batch_embeddings(texts: Sequence[Conditioning], guided: bool) -> Conditioning:
    """Several requests' `encode_prompts` as one batch. With guidance each is
    (negative, positive) and `denoise` doubles the latents as [all, all], so
    the embeddings go as [all negatives, all positives]."""
    if guided:
        return Conditioning.cat([t.rows(0, 1) for t in texts] + [t.rows(1, 2) for t in texts])
    return Conditioning.cat(list(texts))


def schedule_cutoff(scheduler: Any, fraction: float) -> int:
    """The training timestep `fraction` of the way through denoising, as
    diffusers' SDXL pipelines round it (denoising_end / denoising_start)."""
    n = int(scheduler.config.num_train_timesteps)
    return round(n - fraction * n)


def end_timesteps(scheduler: Any, steps: int, denoising_end: float) -> torch.Tensor:
    """txt2img's timesteps, stopping at `denoising_end` of the schedule (1: all):
    those at or above the cutoff, as StableDiffusionXLPipeline(denoising_end=)."""
    scheduler.set_timesteps(steps)
    timesteps: torch.Tensor = scheduler.timesteps
    if denoising_end >= 1.0:
        return timesteps
    cutoff = schedule_cutoff(scheduler, denoising_end)
    return timesteps[: int((timesteps >= cutoff).sum())]


def start_timesteps(scheduler: Any, steps: int, denoising_start: float) -> torch.Tensor:
    """The rest of a `steps` schedule from `denoising_start` on: the timesteps
    below the cutoff, as StableDiffusionXLImg2ImgPipeline(denoising_start=)."""
    scheduler.set_timesteps(steps)
    cutoff = schedule_cutoff(scheduler, denoising_start)
    count = int((scheduler.timesteps < cutoff).sum())
    if scheduler.order == 2 and count % 2 == 0:
        count += 1
    start = len(scheduler.timesteps) - count
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    timesteps: torch.Tensor = scheduler.timesteps[start:]
    return timesteps


def noise_predictor(parts: DiffusionParts, cache_interval: int = 1) -> NoiseFn:
    """The parts' UNet call, or with `cache_interval` > 1 a fresh step-caching
    predictor for one run (stageflow.inference.step_cache): a full UNet call
    every `cache_interval` steps. Interval 1 is the plain call, unchanged."""
    if cache_interval == 1:
        return parts.predict_noise
    if parts.step_cache is None:
        # The stage refuses this at its edge (cache_interval); here as a backstop.
        raise ValueError("step caching needs the torch backend's UNet blocks")
    return parts.step_cache.predictor(cache_interval)


def denoise(
    parts: DiffusionParts,
    scheduler: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    embeddings: Conditioning,
    guidance_scale: float,
    progress: ProgressFn,
    cancelled: CancelledFn,
    after_step: AfterStep | None = None,
    predict_noise: NoiseFn | None = None,
) -> torch.Tensor:
    """The sampling loop; `predict_noise` (default: the parts' UNet call) is
    what step caching replaces (`noise_predictor`)."""
    predict = parts.predict_noise if predict_noise is None else predict_noise
    guided = uses_guidance(guidance_scale)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        check_cancelled(cancelled, i, total)
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = predict(model_input, t, embeddings)
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(noise, t, latents, eta=0.0, return_dict=False)[0]
        if after_step is not None:
            latents = after_step(i, latents)
        progress(i + 1, total)
    return latents


def strength_timesteps(scheduler: Any, steps: int, strength: float) -> torch.Tensor:
    """img2img: run only the last int(steps * strength) of `steps` timesteps."""
    scheduler.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    timesteps: torch.Tensor = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return timesteps


def sample_posterior(moments: torch.Tensor, gen: torch.Generator, parts: DiffusionParts) -> Any:
    """A seeded sample of the VAE's diagonal Gaussian, as diffusers draws it."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    return mean + std * randn(mean.shape, gen, parts)


def encode_image(parts: DiffusionParts, image: Image.Image, gen: torch.Generator) -> Any:
    """PIL image -> scaled latents (one seeded draw from `gen`)."""
    moments = parts.encode_image(pil_to_tensor(image).to(parts.device, parts.dtype))
    return parts.scaling_factor * sample_posterior(moments, gen, parts)


def decode_shape(parts: DiffusionParts) -> DecodeShape:
    return DecodeShape(
        factor=parts.vae_scale_factor,
        base_channels=parts.vae_base_channels,
        quadratic_attention=parts.vae_attention_quadratic,
    )


def decode_latents(
    parts: DiffusionParts, latents: torch.Tensor, tiling: VaeTiling | None = None
) -> torch.Tensor:
    """Scaled latents -> image in [-1, 1]: whole, or in tiles where `tiling`
    says the decode is too big (`stageflow.inference.vae_tiling`)."""
    unscaled = latents / parts.scaling_factor
    plan = None if tiling is None else plan_tile(tiling, decode_shape(parts), unscaled.shape)
    if plan is None:
        return parts.decode_latents(unscaled)
    return tiled_decode(
        parts.decode_latents, unscaled, plan.tile, plan.overlap, parts.vae_scale_factor
    )


def decode_image(
    parts: DiffusionParts, latents: torch.Tensor, tiling: VaeTiling | None = None
) -> Image.Image:
    return tensor_to_pil(decode_latents(parts, latents, tiling))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float in [-1, 1], as diffusers' VaeImageProcessor."""
    array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(array.transpose(2, 0, 1)[None].copy()) - 1.0


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> RGB PIL, rounding as diffusers' numpy_to_pil."""
    array = (image * 0.5 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))
