"""The parts of a Stable Diffusion folder, as plain callables for our loop.

The denoise loop (`stageflow.inference.denoise`) only calls what `DiffusionParts`
holds, so a compiled backend (ONNX Runtime, TensorRT) replaces the UNet, VAE
or text encoder by providing other callables, with the loop unchanged.

`load_torch_parts` reads a diffusers folder with each component's own
`from_pretrained(<folder>/<subfolder>)`: a real Stable Diffusion 1.5 folder
and the tiny fixture load through the same lines. Weights load in the
precision asked for (`stageflow.inference.precision`; float32 by default)
whatever their stored dtype (the trained fixtures are stored in fp16; CPU
kernels want float32, and transformers 5 would otherwise keep fp16). Each
part casts its inputs to its weights' dtype and its output back to float32,
so the loop's latents, noise and scheduler arithmetic stay float32. In fp16
a VAE whose config sets `force_upcast` (SD 1.x/2.x VAEs overflow in fp16)
stays float32, as diffusers' pipelines keep it.
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
    # The loop's dtype (latents, noise, scheduler): float32 whatever the weights are.
    dtype: torch.dtype = torch.float32
    # The precision the weights run in, by name (stageflow.inference.precision).
    weights_dtype: str = "fp32"
    # Channels of the VAE decoder's full-resolution blocks: what its memory scales with.
    vae_base_channels: int = 128
    # Whether the VAE's attention materialises (h*w)^2 scores (ONNX graphs do;
    # torch's CPU SDPA does not): the decode memory estimate adds them.
    vae_attention_quadratic: bool = False


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


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    from stageflow.inference.precision import check_dtype

    return TORCH_DTYPES[check_dtype(name)]


def load_torch_parts(folder: Path, device: str = "cpu", dtype: str = "fp32") -> DiffusionParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from stageflow.inference.scheduler import scheduler_factory

    dev = torch.device(device)
    weights = torch_dtype(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    # Any: the libraries' own annotations of from_pretrained/.to confuse mypy.
    with quiet_hub_progress():
        text_encoder: Any = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=weights)
    # low_cpu_mem_usage needs `accelerate`, which we do not depend on.
    unet: Any = UNet2DConditionModel.from_pretrained(
        folder / "unet", low_cpu_mem_usage=False, dtype=weights
    )
    vae_config = AutoencoderKL.load_config(folder / "vae")
    vae_weights = (
        torch.float32
        if weights == torch.float16 and vae_config.get("force_upcast", True)
        else weights
    )
    vae: Any = AutoencoderKL.from_pretrained(
        folder / "vae", low_cpu_mem_usage=False, dtype=vae_weights
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

    # Each part: inputs cast to its weights' dtype, output back to float32
    # (no-ops in fp32, so the fp32 path computes exactly what diffusers does).
    def encode_text(ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = text_encoder(ids.to(dev), attention_mask=None)[0]
        return out.float()

    def predict_noise(sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = unet(
            sample.to(weights), t, encoder_hidden_states=text.to(weights), return_dict=False
        )[0]
        return out.float()

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        moments: torch.Tensor = vae.encode(image.to(vae_weights)).latent_dist.parameters
        return moments.float()

    def decode_latents(latents: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = vae.decode(latents.to(vae_weights), return_dict=False)[0]
        return out.float()

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
        weights_dtype=dtype,
        vae_base_channels=int(vae.config.block_out_channels[0]),
    )
