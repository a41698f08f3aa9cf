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
from stageflow.inference.sd_parts import DiffusionParts
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
    parts: DiffusionParts, prompt: str, negative_prompt: str, guided: bool
) -> torch.Tensor:
    """Text embeddings; with guidance, (negative, positive) stacked as batch 2."""
    cond = parts.encode_text(parts.tokenize(prompt))
    if not guided:
        return cond
    uncond = parts.encode_text(parts.tokenize(negative_prompt))
    return torch.cat([uncond, cond])


def batch_embeddings(texts: Sequence[torch.Tensor], guided: bool) -> torch.Tensor:
    """Several requests' `encode_prompts` as one batch. With guidance each is
    (negative, positive) and `denoise` doubles the latents as [all, all], so
    the embeddings go as [all negatives, all positives]."""
    if guided:
        return torch.cat([t[:1] for t in texts] + [t[1:] for t in texts])
    return torch.cat(list(texts))


def denoise(
    parts: DiffusionParts,
    scheduler: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    embeddings: torch.Tensor,
    guidance_scale: float,
    progress: ProgressFn,
    cancelled: CancelledFn,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    guided = uses_guidance(guidance_scale)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        check_cancelled(cancelled, i, total)
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = parts.predict_noise(model_input, t, embeddings)
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
