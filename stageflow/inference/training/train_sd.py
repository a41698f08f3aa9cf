"""Train the tiny latent-diffusion pipeline on the shapes data set.

Two phases, each seeded: a VAE /4 (MSE + a tiny KL), then a CLIP text encoder
and a UNet jointly on the frozen VAE's latents (epsilon prediction, 10 % empty
captions for classifier-free guidance). The result is a diffusers Stable
Diffusion folder, weights in fp16, that `StableDiffusionPipeline` loads as is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stageflow.inference import tokenizer as clip_tokenizer
from stageflow.inference.fixtures import SCHEDULER_CONFIG, clip_text_config, write_model_index
from stageflow.inference.sd_parts import quiet_hub_progress
from stageflow.inference.training import data

Log = Callable[[str], None]

IMAGE_SIZE = 32
TEXT_HIDDEN = 64

VAE_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    # Three blocks: latents are 1/4 of the side (8x8 for 32 px).
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 4,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


@dataclass(frozen=True)
class SdTrainSettings:
    seed: int = 0
    vae_steps: int = 1500
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    diffusion_steps: int = 2200
    diffusion_lr: float = 1e-3
    batch_size: int = 32
    # Images pre-drawn for the diffusion phase (their latents are encoded once).
    dataset_size: int = 8192


def _batch(rng: np.random.Generator, n: int, combos: list[tuple[str, str, str]]) -> torch.Tensor:
    images = [data.render(data.random_spec(rng, combos), IMAGE_SIZE) for _ in range(n)]
    return torch.from_numpy(data.to_array(images))


def train_vae(settings: SdTrainSettings, log: Log) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(settings.seed)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    # Every combination, held-out ones included: the VAE only learns to draw
    # colours and edges, never which caption goes with which picture.
    combos = data.all_combinations()
    rng = np.random.default_rng(settings.seed + 1)
    optim = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr)
    vae.train()
    for step in range(settings.vae_steps):
        x = _batch(rng, settings.batch_size, combos)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + settings.kl_weight * posterior.kl().mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step % 100 == 0 or step == settings.vae_steps - 1:
            log(f"vae step {step}: mse {mse.item():.5f}")
    return vae.eval()


@torch.no_grad()
def encode_dataset(
    vae: Any, settings: SdTrainSettings
) -> tuple[torch.Tensor, list[data.ShapeSpec], float]:
    """Posterior moments of the training images, their specs, and 1/std of latents."""
    specs = list(data.specs(settings.seed + 2, settings.dataset_size, data.training_combinations()))
    moments = []
    for i in range(0, len(specs), 256):
        x = torch.from_numpy(
            data.to_array([data.render(s, IMAGE_SIZE) for s in specs[i : i + 256]])
        )
        moments.append(vae.encode(x).latent_dist.parameters)
    all_moments = torch.cat(moments)
    mean = all_moments[:, : VAE_CONFIG["latent_channels"]]
    # As SD's 0.18215: scale latents to unit variance for the noise schedule.
    scaling_factor = float(1.0 / mean.std())
    return all_moments, specs, scaling_factor


def train_diffusion(
    vae_moments: torch.Tensor,
    specs: list[data.ShapeSpec],
    scaling_factor: float,
    tokenizer: Any,
    settings: SdTrainSettings,
    log: Log,
) -> tuple[Any, Any]:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(settings.seed + 3)
    text_encoder: Any = CLIPTextModel(
        clip_text_config(len(tokenizer), hidden=TEXT_HIDDEN, intermediate=128)
    )
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    params = sum(p.numel() for p in unet.parameters())
    log(f"unet parameters: {params:,}")
    # The forward process is the sampler's own: same betas, same alphas_cumprod.
    noise_schedule: Any = DDIMScheduler(**SCHEDULER_CONFIG)
    optim = torch.optim.AdamW(
        [*unet.parameters(), *text_encoder.parameters()], lr=settings.diffusion_lr
    )
    rng = np.random.default_rng(settings.seed + 4)
    gen = torch.Generator().manual_seed(settings.seed + 5)
    unet.train()
    text_encoder.train()
    for step in range(settings.diffusion_steps):
        index = torch.from_numpy(rng.integers(len(specs), size=settings.batch_size))
        captions = [data.random_caption(rng, specs[int(i)]) for i in index]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        mean, logvar = vae_moments[index].chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=gen)
        latents = (mean + torch.exp(0.5 * logvar) * eps) * scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(
            0, noise_schedule.config.num_train_timesteps, (len(index),), generator=gen
        )
        noisy = noise_schedule.add_noise(latents, noise, t)
        # No attention mask, exactly as StableDiffusionPipeline encodes prompts.
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        optim.step()
        if step % 100 == 0 or step == settings.diffusion_steps - 1:
            log(f"diffusion step {step}: loss {loss.item():.5f}")
    return text_encoder.eval(), unet.eval()


def train_sd(folder: Path, settings: SdTrainSettings, log: Log = print) -> dict[str, Any]:
    """Train and write the folder; returns measurements for the manifest."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTokenizer

    started = time.monotonic()
    clip_tokenizer.write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    vae = train_vae(settings, log)
    moments, specs, scaling_factor = encode_dataset(vae, settings)
    log(f"vae scaling factor (1/std of latents): {scaling_factor:.5f}")
    text_encoder, unet = train_diffusion(moments, specs, scaling_factor, tokenizer, settings, log)

    # The scaling factor lives in the VAE's config, where SD pipelines read it.
    final_vae: Any = AutoencoderKL(**VAE_CONFIG, scaling_factor=round(scaling_factor, 6))
    final_vae.load_state_dict(vae.state_dict())
    with quiet_hub_progress():
        text_encoder.half().save_pretrained(folder / "text_encoder")
    unet.half().save_pretrained(folder / "unet")
    final_vae.half().save_pretrained(folder / "vae")
    scheduler: Any = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(folder / "scheduler")
    write_model_index(folder)
    # Wall time goes to the log, not the manifest: the manifest stays reproducible.
    log(f"sd training took {time.monotonic() - started:.0f} s")
    return {
        "settings": asdict(settings),
        "scaling_factor": round(scaling_factor, 6),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }
