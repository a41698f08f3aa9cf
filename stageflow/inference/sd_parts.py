"""The parts of a Stable Diffusion folder, as plain callables for our loop.

The denoise loop (`stageflow.inference.denoise`) only calls what `DiffusionParts`
holds, so a compiled backend (ONNX Runtime, TensorRT) replaces the UNet, VAE
or text encoder by providing other callables, with the loop unchanged.

`load_torch_parts` reads a diffusers folder with each component's own
`from_pretrained(<folder>/<subfolder>)`: a real Stable Diffusion 1.5 folder
and the tiny fixture load through the same lines. Weights load as float32
whatever their stored dtype (the trained fixtures are stored in fp16; CPU
kernels want float32, and transformers 5 would otherwise keep fp16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# (latent batch, timestep, text embeddings) -> predicted noise
NoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DiffusionParts:
    # text -> token ids (1, model_max_length), padded like the SD pipelines
    tokenize: Callable[[str], torch.Tensor]
    # token ids -> hidden states (1, L, D)
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    predict_noise: NoiseFn
    # image in [-1, 1] (1, 3, H, W) -> VAE posterior moments (1, 2C, H/f, W/f)
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    # unscaled latents (1, C, H/f, W/f) -> image in [-1, 1] (1, 3, H, W)
    decode_latents: Callable[[torch.Tensor], torch.Tensor]
    # A fresh scheduler per run: schedulers keep per-run state.
    new_scheduler: Callable[[], Any]
    latent_channels: int
    scaling_factor: float
    vae_scale_factor: int
    unet_levels: int
    device: torch.device
    dtype: torch.dtype = torch.float32


@contextlib.contextmanager
def quiet_hub_progress() -> Iterator[None]:
    """Silence transformers' per-file progress bars (they flood service logs)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_torch_parts(folder: Path, device: str = "cpu") -> DiffusionParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from stageflow.inference.scheduler import scheduler_factory

    dev = torch.device(device)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    # Any: the libraries' own annotations of from_pretrained/.to confuse mypy.
    with quiet_hub_progress():
        text_encoder: Any = CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=torch.float32
        )
    # low_cpu_mem_usage needs `accelerate`, which we do not depend on.
    unet: Any = UNet2DConditionModel.from_pretrained(
        folder / "unet", low_cpu_mem_usage=False, dtype=torch.float32
    )
    vae: Any = AutoencoderKL.from_pretrained(
        folder / "vae", low_cpu_mem_usage=False, dtype=torch.float32
    )
    text_encoder = text_encoder.to(dev).eval()
    unet = unet.to(dev).eval()
    vae = vae.to(dev).eval()
    # Our DDIM, not diffusers': the same scheduler code drives every backend.
    new_scheduler = scheduler_factory(folder)

    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"{folder}: UNet takes {unet.config.in_channels} channels; this loop drives "
            f"{vae.config.latent_channels}-channel UNets (not inpainting-specific ones)"
        )

    def tokenize(text: str) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            text,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    def encode_text(ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = text_encoder(ids.to(dev), attention_mask=None)[0]
        return out

    def predict_noise(sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
        return out

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        moments: torch.Tensor = vae.encode(image).latent_dist.parameters
        return moments

    def decode_latents(latents: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = vae.decode(latents, return_dict=False)[0]
        return out

    return DiffusionParts(
        tokenize=tokenize,
        encode_text=encode_text,
        predict_noise=predict_noise,
        encode_image=encode_image,
        decode_latents=decode_latents,
        new_scheduler=new_scheduler,
        latent_channels=int(vae.config.latent_channels),
        scaling_factor=float(vae.config.scaling_factor),
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        unet_levels=len(unet.config.block_out_channels),
        device=dev,
    )
