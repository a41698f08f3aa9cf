"""Tiny seeded models for tests and the demo, built locally in seconds.

`build_fixtures(out_dir)` writes:

- `tiny-sd/`: a complete diffusers Stable Diffusion folder (model_index.json,
  tokenizer, CLIP text encoder, UNet, VAE /8, DDIM scheduler; no safety
  checker) that `StableDiffusionPipeline.from_pretrained` loads as is, and so
  does our own loader: the code path of a real SD 1.5 folder.
- `tiny-sdxl/` and `tiny-sdxl-refiner/`: SDXL-shaped base and refiner folders
  (two text encoders, CLIP-L- and OpenCLIP-G-like but tiny, pooled projections,
  a `text_time` UNet) that `StableDiffusionXLPipeline` and
  `StableDiffusionXLImg2ImgPipeline` load as they are, and so does our loader.
- `tiny-esrgan-x4/`: an RRDBNet x4 upscaler with Real-ESRGAN's parameter names.
- `manifest.json`: the sha256 of every file written.

Weights are random but seeded; the same seed and library versions give
byte-identical files (no timestamps are written anywhere).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from stageflow.inference import tokenizer as clip_tokenizer
from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig, save_rrdbnet
from stageflow.inference.sd_parts import quiet_hub_progress

SD_FOLDER = "tiny-sd"
SDXL_FOLDER = "tiny-sdxl"
SDXL_REFINER_FOLDER = "tiny-sdxl-refiner"
ESRGAN_FOLDER = "tiny-esrgan-x4"
FOLDERS = (SD_FOLDER, SDXL_FOLDER, SDXL_REFINER_FOLDER, ESRGAN_FOLDER)
MANIFEST = "manifest.json"

TEXT_HIDDEN = 32

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

# Four blocks so latents are 1/8 of the image side, as in real SD.
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}

# Stable Diffusion 1.5's noise schedule.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

# SDXL's shapes, scaled down: encoder 1 (CLIP-L) 32 wide, encoder 2 (OpenCLIP-G)
# 48 wide with a 32-dim pooled projection; the base's UNet cross-attends to
# both (80), the refiner's to encoder 2 only (48). Added embedding: 8 per
# time id, 6 ids for the base (sizes and crop), 5 for the refiner (aesthetics).
SDXL_TEXT_1 = 32
SDXL_TEXT_2 = 48
SDXL_POOLED = 32
SDXL_TIME_DIM = 8


def sdxl_unet_config(cross_attention: int, time_ids: int) -> dict[str, Any]:
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "transformer_layers_per_block": (1, 2),
        "cross_attention_dim": cross_attention,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_DIM,
        "projection_class_embeddings_input_dim": SDXL_TIME_DIM * time_ids + SDXL_POOLED,
        "norm_num_groups": 8,
    }


# SDXL's VAE layout (latents 1/8 of the side), with SDXL's scaling factor.
SDXL_VAE_CONFIG: dict[str, Any] = {**VAE_CONFIG, "scaling_factor": 0.13025}

ESRGAN_CONFIG = RRDBNetConfig(num_feat=16, num_block=1, num_grow_ch=8, scale=4)


def build_fixtures(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the fixture models under `out_dir`; returns their paths by name.

    Existing fixture folders there (`FOLDERS`) are replaced; each is built in
    a scratch folder first so a failed build leaves the old ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as scratch:
        _write_tiny_sd(Path(scratch) / SD_FOLDER, seed)
        _write_tiny_sdxl(Path(scratch) / SDXL_FOLDER, seed, refiner=False)
        _write_tiny_sdxl(Path(scratch) / SDXL_REFINER_FOLDER, seed, refiner=True)
        _write_tiny_esrgan(Path(scratch) / ESRGAN_FOLDER, seed)
        for name in FOLDERS:
            target = out_dir / name
            if target.exists():
                shutil.rmtree(target)
            (Path(scratch) / name).rename(target)
    manifest = out_dir / MANIFEST
    _write_json(manifest, {"seed": seed, "files": _digests(out_dir, FOLDERS)})
    return {**{name: out_dir / name for name in FOLDERS}, "manifest": manifest}


def clip_text_config(vocab_size: int, *, hidden: int, intermediate: int) -> Any:
    """A small CLIP text encoder's config over our offline tokenizer's vocab."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=hidden,
        max_position_embeddings=clip_tokenizer.MODEL_MAX_LENGTH,
        # The pooled output is read at the EOS token; ids must match our vocab.
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _write_tiny_sd(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    vocab_size = clip_tokenizer.write_tokenizer(folder / "tokenizer")
    text_config = clip_text_config(vocab_size, hidden=TEXT_HIDDEN, intermediate=64)
    torch.manual_seed(seed)
    with quiet_hub_progress():
        CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    # Any: diffusers' class decorators hide save_pretrained from mypy.
    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    unet.save_pretrained(folder / "unet")
    torch.manual_seed(seed)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    vae.save_pretrained(folder / "vae")
    scheduler: Any = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(folder / "scheduler")

    write_model_index(folder)


def _write_tiny_sdxl(folder: Path, seed: int, *, refiner: bool) -> None:
    """An SDXL base folder, or the refiner's: encoder 2 only, aesthetic-score ids."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    encoders: dict[str, Any] = {}
    if not refiner:
        vocab_size = clip_tokenizer.write_tokenizer(folder / "tokenizer")
        config = clip_text_config(vocab_size, hidden=SDXL_TEXT_1, intermediate=64)
        torch.manual_seed(seed)
        encoders["text_encoder"] = CLIPTextModel(config)
    vocab_size = clip_tokenizer.write_tokenizer(folder / "tokenizer_2")
    config = clip_text_config(vocab_size, hidden=SDXL_TEXT_2, intermediate=96)
    config.projection_dim = SDXL_POOLED
    torch.manual_seed(seed + 1)
    encoders["text_encoder_2"] = CLIPTextModelWithProjection(config)
    with quiet_hub_progress():
        for name, model in encoders.items():
            model.save_pretrained(folder / name)
    cross = SDXL_TEXT_2 if refiner else SDXL_TEXT_1 + SDXL_TEXT_2
    torch.manual_seed(seed + (3 if refiner else 2))
    unet: Any = UNet2DConditionModel(**sdxl_unet_config(cross, 5 if refiner else 6))
    unet.save_pretrained(folder / "unet")
    torch.manual_seed(seed)
    vae: Any = AutoencoderKL(**SDXL_VAE_CONFIG)
    vae.save_pretrained(folder / "vae")
    scheduler: Any = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(folder / "scheduler")
    write_sdxl_model_index(folder, refiner=refiner)


def write_sdxl_model_index(folder: Path, *, refiner: bool) -> None:
    """The model_index.json of a diffusers SDXL base or refiner folder."""
    import diffusers

    first: list[str | None] = [None, None] if refiner else ["transformers", "CLIPTextModel"]
    tokenizer: list[str | None] = [None, None] if refiner else ["transformers", "CLIPTokenizer"]
    _write_json(
        folder / "model_index.json",
        {
            "_class_name": (
                "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline"
            ),
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "force_zeros_for_empty_prompt": not refiner,
            **({"requires_aesthetics_score": True} if refiner else {}),
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": first,
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": tokenizer,
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def write_model_index(folder: Path) -> None:
    """The model_index.json of a diffusers StableDiffusion folder (no safety checker)."""
    import diffusers

    _write_json(
        folder / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def _write_tiny_esrgan(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = RRDBNet(ESRGAN_CONFIG)
    _pass_image_through(net)
    save_rrdbnet(net, ESRGAN_CONFIG, folder)


@torch.no_grad()
def _pass_image_through(net: RRDBNet, jitter: float = 0.02) -> None:
    """Make the untrained trunk carry the RGB channels straight through.

    With plain random weights the output is a near-black frame: a useless demo,
    and a tiling test that compares black with black. Identity kernels plus
    seeded jitter give "nearest-neighbour x4 plus a learned-looking residual",
    which keeps every layer's receptive field in play.
    """
    for conv in (net.conv_first, net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
        torch.nn.init.dirac_(conv.weight)
        conv.weight.add_(jitter * torch.randn_like(conv.weight))
        if conv.bias is not None:
            torch.nn.init.zeros_(conv.bias)
    if net.conv_body.bias is not None:
        torch.nn.init.zeros_(net.conv_body.bias)
    net.conv_body.weight.mul_(0.1)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _digests(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    files = sorted(p for name in folders for p in (root / name).rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): _sha256(p) for p in files}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
