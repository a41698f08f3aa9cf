"""diffusers' own StableDiffusionPipeline, split into a latent hand-off.

StableDiffusionPipeline has no denoising_end / denoising_start (the SDXL
pipelines do), so the SD 1.5 reference is built from it the way SDXL's are
defined: the base runs the timesteps at or above the cutoff and stops
(`interrupt` from the step callback, output_type="latent"); the refiner runs
the same pipeline from those latents over the timesteps below the cutoff
(diffusers' DDIM with its timesteps cut), adding no noise. Torch is imported
on use (unit tests must not import it at collection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cutoff(num_train_timesteps: int, fraction: float) -> int:
    return round(num_train_timesteps - fraction * num_train_timesteps)


def sd_pipeline(folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_base_latents(
    pipe: Any, prompt: str, *, seed: int, steps: int, guidance: float, size: int, end: float
) -> Any:
    """The base's latents at `end` of its schedule, as diffusers computes them."""
    import torch

    pipe.scheduler.set_timesteps(steps)
    keep = int((pipe.scheduler.timesteps >= cutoff(1000, end)).sum())

    def stop(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i + 1 >= keep:
            pipeline._interrupt = True
        return kwargs

    return pipe(
        prompt,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        output_type="latent",
        callback_on_step_end=stop,
    ).images


def sd_resumed_image(
    pipe: Any, prompt: str, latents: Any, *, steps: int, guidance: float, start: float
) -> Any:
    """The rest of the schedule from `start` over `latents`, decoded (numpy, [0, 1])."""
    from diffusers import DDIMScheduler

    class ResumedDDIM(DDIMScheduler):
        def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
            super().set_timesteps(num_inference_steps, device)
            n = self.config.num_train_timesteps
            timesteps: Any = getattr(self, "timesteps")  # noqa: B009 (diffusers sets it untyped)
            self.timesteps = timesteps[timesteps < cutoff(n, start)]

    original = pipe.scheduler
    pipe.scheduler = ResumedDDIM.from_config(original.config)
    try:
        size = latents.shape[-1] * pipe.vae_scale_factor
        return pipe(
            prompt,
            latents=latents,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            output_type="np",
        ).images[0]
    finally:
        pipe.scheduler = original
