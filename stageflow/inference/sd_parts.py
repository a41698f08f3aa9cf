"""The parts of a Stable Diffusion folder, as plain callables for our loop.

The denoise loop (`stageflow.inference.denoise`) only calls what `DiffusionParts`
holds, so a compiled backend (ONNX Runtime, TensorRT) replaces the UNet, VAE
or text encoder by providing other callables, with the loop unchanged.

`load_torch_parts` reads a diffusers folder with each component's own
`from_pretrained(<folder>/<subfolder>)`: a real Stable Diffusion 1.5 folder
and the tiny fixture load through the same lines. Weights load as float32
whatever their stored dtype (the trained fixtures are stored in fp16; CPU
kernels want float32, and transformers 5 would otherwise keep fp16). Weights
load in the precision asked for (`stageflow.inference.precision`; float32 by
default): each part casts its inputs to its weights' dtype and its output
back to float32, so the loop's latents, noise and scheduler arithmetic stay
float32. In fp16 a VAE whose config sets `force_upcast` (SD 1.x/2.x VAEs
overflow in fp16) stays float32, as diffusers' pipelines keep it.

Which parts a folder has is its diffusion family, named by model_index.json's
`_class_name` (`DIFFUSION_FAMILIES`): Stable Diffusion 1.x/2.x here, SDXL base
and refiner in `stageflow.inference.sdxl`. A family differs in how it
conditions the UNet (`Conditioning`), never in the loop that drives it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stageflow.inference.compiled import GraphOptions, graph_part, graphs_of

if TYPE_CHECKING:
    from stageflow.inference.step_cache import StepCache

SD_FAMILY = "sd"


@dataclass(frozen=True)
class Conditioning:
    """What the UNet sees besides the latents and the timestep, one row per
    latent row: text hidden states (B, L, D), and the inputs a family adds
    (SDXL: pooled text embeddings `text_embeds` and micro-conditioning
    `time_ids`, the UNet's `added_cond_kwargs`)."""

    text: torch.Tensor
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, start: int, stop: int) -> Conditioning:
        return Conditioning(
            self.text[start:stop], {k: v[start:stop] for k, v in self.added.items()}
        )

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        return Conditioning(
            torch.cat([c.text for c in items]),
            {k: torch.cat([c.added[k] for c in items]) for k in items[0].added},
        )


# (prompt, negative prompt, guided, output size (height, width)) -> the
# conditioning; with guidance two rows: (negative, positive).
ConditionFn = Callable[[str, str, bool, tuple[int, int]], Conditioning]
# (latent batch, timestep, conditioning) -> predicted noise
NoiseFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def text_conditioner(
    tokenize: Callable[[str], torch.Tensor], encode_text: Callable[[torch.Tensor], torch.Tensor]
) -> ConditionFn:
    """Stable Diffusion 1.x/2.x: one text encoder's last hidden states, nothing added."""

    def condition(prompt: str, negative: str, guided: bool, size: tuple[int, int]) -> Conditioning:
        cond = encode_text(tokenize(prompt))
        if not guided:
            return Conditioning(cond)
        return Conditioning(torch.cat([encode_text(tokenize(negative)), cond]))

    return condition


@dataclass
class DiffusionParts:
    # text -> token ids (1, model_max_length), padded like the SD pipelines
    tokenize: Callable[[str], torch.Tensor]
    # token ids -> hidden states (1, L, D)
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    # prompts and output size -> what the UNet is conditioned on
    condition: ConditionFn
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
    # The diffusion family (a key's value of DIFFUSION_FAMILIES: "sd", "sdxl"):
    # with the VAE's numbers, what makes two models' latents interchangeable.
    family: str = SD_FAMILY
    # The UNet as blocks, for step caching (torch only; None: a compiled UNet,
    # one graph with no block boundary to stop at, so cache_interval must be 1).
    step_cache: StepCache | None = None
    # The parts under torch.compile or in channels_last (stageflow.inference.compiled),
    # for their compile seconds; empty when the UNet and VAE run eager as loaded.
    graphs: tuple[Any, ...] = ()


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


# model_index.json `_class_name` -> "module:function" loading that family's
# torch parts (folder, device) -> DiffusionParts. A new family is one line here
# (imported on use: `import sd_parts` stays cheap).
DIFFUSION_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "stageflow.inference.sd_parts:load_sd_parts",
    "StableDiffusionImg2ImgPipeline": "stageflow.inference.sd_parts:load_sd_parts",
    "StableDiffusionXLPipeline": "stageflow.inference.sdxl:load_sdxl_parts",
    "StableDiffusionXLImg2ImgPipeline": "stageflow.inference.sdxl:load_sdxl_parts",
}
# A folder without model_index.json is read as Stable Diffusion (older exports).
DEFAULT_PIPELINE = "StableDiffusionPipeline"


def pipeline_class(folder: Path) -> str:
    """model_index.json's `_class_name`: which diffusers pipeline the folder is."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return DEFAULT_PIPELINE
    return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", DEFAULT_PIPELINE))


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    from stageflow.inference.precision import check_dtype

    return TORCH_DTYPES[check_dtype(name)]


def stored_variant(part: Path, weights: torch.dtype) -> str | None:
    """The `variant=` for a part's from_pretrained: `weights`' name where the part
    stores its weights in that dtype already (stageflow.inference.variants: no
    cast at load), else None (the folder's own files, cast as they load)."""
    from stageflow.inference.variants import has_variant

    name = next(key for key, value in TORCH_DTYPES.items() if value == weights)
    return name if has_variant(part, name) else None


def load_torch_parts(
    folder: Path, device: str = "cpu", dtype: str = "fp32", graph: GraphOptions | None = None
) -> DiffusionParts:
    """The torch parts of a diffusers folder, by its family (`DIFFUSION_FAMILIES`),
    in `dtype`, its UNet and VAE decode run as `graph` says (compiled or eager;
    a family whose loader takes no dtype or graph serves fp32 eager only)."""
    name = pipeline_class(folder)
    target = DIFFUSION_FAMILIES.get(name)
    if target is None:
        raise ValueError(
            f"{folder}: model_index.json names {name}; this loop drives "
            f"{', '.join(sorted(DIFFUSION_FAMILIES))}"
        )
    module, _, function = target.partition(":")
    loader: Callable[..., DiffusionParts] = getattr(importlib.import_module(module), function)
    kwargs: dict[str, Any] = {}
    if dtype != "fp32":
        kwargs["dtype"] = dtype
    if graph is not None and not graph.default:
        kwargs["graph"] = graph
    taken = inspect.signature(loader).parameters
    for key, value in kwargs.items():
        if key not in taken:
            raise ValueError(f"{folder}: {name} folders take no {key} option; got {value}")
    return loader(Path(folder), device, **kwargs)


def load_vae_and_unet(
    folder: Path,
    dev: torch.device,
    weights: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> tuple[Any, Any]:
    """The folder's UNet and VAE in `weights` on `dev` (a force_upcast VAE stays
    float32 in fp16), checked to drive together; in channels_last memory format
    when asked."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    # Any: the libraries' own annotations of from_pretrained/.to confuse mypy.
    # low_cpu_mem_usage needs `accelerate`, which we do not depend on.
    unet: Any = UNet2DConditionModel.from_pretrained(
        folder / "unet",
        low_cpu_mem_usage=False,
        dtype=weights,
        variant=stored_variant(folder / "unet", weights),
    )
    upcast = weights == torch.float16 and AutoencoderKL.load_config(folder / "vae").get(
        "force_upcast", True
    )
    vae_weights = torch.float32 if upcast else weights
    vae: Any = AutoencoderKL.from_pretrained(
        folder / "vae",
        low_cpu_mem_usage=False,
        dtype=vae_weights,
        variant=stored_variant(folder / "vae", vae_weights),
    )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"{folder}: UNet takes {unet.config.in_channels} channels; this loop drives "
            f"{vae.config.latent_channels}-channel UNets (not inpainting-specific ones)"
        )
    vae, unet = vae.to(dev).eval(), unet.to(dev).eval()
    if channels_last:
        vae, unet = (
            vae.to(memory_format=torch.channels_last),
            unet.to(memory_format=torch.channels_last),
        )
    return vae, unet


def clip_tokenize(tokenizer: Any) -> Callable[[str], torch.Tensor]:
    """text -> token ids padded to the tokenizer's length, as the SD pipelines pad."""

    def tokenize(text: str) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            text,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    return tokenize


def unet_part(unet: Any, graph: GraphOptions) -> Callable[..., Any]:
    """The UNet's forward as `graph` says: the module itself, or compiled per shape."""
    return graph_part("unet", unet, graph)


def vae_parts(
    folder: Path, vae: Any, unet: Any, dev: torch.device, graph: GraphOptions | None = None
) -> dict[str, Any]:
    """The DiffusionParts fields every family shares: VAE, scheduler and sizes;
    the VAE decode compiled or in channels_last as `graph` says (the encode
    stays eager: img2img's one call per image)."""
    from stageflow.inference.scheduler import scheduler_factory

    graph = graph or GraphOptions()
    vae_weights = next(vae.parameters()).dtype

    def vae_decode(latents: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = vae.decode(latents, return_dict=False)[0]
        return out

    decode = graph_part("vae_decoder", vae_decode, graph)

    # Inputs cast to the VAE's dtype, outputs back to float32 (no-ops in fp32).
    def encode_image(image: torch.Tensor) -> torch.Tensor:
        moments: torch.Tensor = vae.encode(image.to(vae_weights)).latent_dist.parameters
        return moments.float()

    def decode_latents(latents: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = decode(latents.to(vae_weights))
        return out.float()

    return {
        "encode_image": encode_image,
        "decode_latents": decode_latents,
        # Our DDIM, not diffusers': the same scheduler code drives every backend.
        "new_scheduler": scheduler_factory(folder),
        "latent_channels": int(vae.config.latent_channels),
        "scaling_factor": float(vae.config.scaling_factor),
        "vae_scale_factor": 2 ** (len(vae.config.block_out_channels) - 1),
        "unet_levels": len(unet.config.block_out_channels),
        "device": dev,
        "vae_base_channels": int(vae.config.block_out_channels[0]),
        "graphs": graphs_of(decode),
    }


def load_sd_parts(
    folder: Path, device: str = "cpu", dtype: str = "fp32", graph: GraphOptions | None = None
) -> DiffusionParts:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, text-only cross-attention."""
    from transformers import CLIPTextModel, CLIPTokenizer

    dev = torch.device(device)
    weights = torch_dtype(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    with quiet_hub_progress():
        text_encoder: Any = CLIPTextModel.from_pretrained(
            folder / "text_encoder",
            dtype=weights,
            variant=stored_variant(folder / "text_encoder", weights),
        )
    text_encoder = text_encoder.to(dev).eval()
    graph = graph or GraphOptions()
    vae, unet = load_vae_and_unet(folder, dev, weights, graph.channels_last)
    forward = unet_part(unet, graph)
    tokenize = clip_tokenize(tokenizer)

    # Inputs cast to the weights' dtype, outputs back to float32 (no-ops in fp32,
    # so the fp32 path computes exactly what diffusers does).
    def encode_text(ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = text_encoder(ids.to(dev), attention_mask=None)[0]
        return out.float()

    def predict_noise(sample: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out: torch.Tensor = forward(
            sample.to(weights), t, encoder_hidden_states=cond.text.to(weights), return_dict=False
        )[0]
        return out.float()

    from stageflow.inference.step_cache import StepCache

    shared = vae_parts(folder, vae, unet, dev, graph)
    return DiffusionParts(
        tokenize=tokenize,
        encode_text=encode_text,
        condition=text_conditioner(tokenize, encode_text),
        predict_noise=predict_noise,
        **{**shared, "graphs": graphs_of(forward) + shared["graphs"]},
        weights_dtype=dtype,
        # The uncompiled module: cache_interval > 1 runs every step eager.
        step_cache=StepCache(unet, weights),
    )
