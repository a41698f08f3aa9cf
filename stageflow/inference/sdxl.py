"""The SDXL family's parts: two text encoders, pooled embeddings, micro-conditioning.

A diffusers SDXL folder (`StableDiffusionXLPipeline`, or the refiner's
`StableDiffusionXLImg2ImgPipeline`) loads with each component's own
`from_pretrained`, as SD 1.5 does; what differs is how the UNet is
conditioned, which `sdxl_conditioner` computes as diffusers does:

- text: the penultimate hidden states of each text encoder (CLIP-L, then
  OpenCLIP-G; the refiner has only the second), concatenated on the last axis;
- `text_embeds`: the second encoder's projected pooled output;
- `time_ids`: (original height, width, crop top, left, target height, width)
  for the base; the refiner (`requires_aesthetics_score`) replaces the target
  size by an aesthetic score, and its negative row by a negative score.

The original and target sizes are the output size and the crop is (0, 0), the
pipelines' defaults. With `force_zeros_for_empty_prompt` (SDXL base) an empty
negative prompt is zeros, not the encoding of "" (diffusers: negative_prompt=None).
The denoise loop is SD 1.5's, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stageflow.inference.compiled import GraphOptions, graphs_of
from stageflow.inference.sd_parts import (
    ConditionFn,
    Conditioning,
    DiffusionParts,
    clip_tokenize,
    load_vae_and_unet,
    quiet_hub_progress,
    stored_variant,
    torch_dtype,
    unet_part,
    vae_parts,
)
from stageflow.inference.step_cache import StepCache

SDXL_FAMILY = "sdxl"
# diffusers' StableDiffusionXLImg2ImgPipeline defaults.
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5
# (text hidden states (1, L, D), pooled (1, P) or None): one encoder's output.
EncodeFn = Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]


def _encoder(tokenizer: Any, encoder: Any, dev: torch.device) -> EncodeFn:
    tokenize = clip_tokenize(tokenizer)

    def encode(text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = encoder(tokenize(text).to(dev), output_hidden_states=True)
        # CLIPTextModelWithProjection's first output is its pooled projection (2-D).
        # Back to float32 from the weights' dtype (no-ops in fp32): the loop's dtype.
        pooled = out[0].float() if out[0].ndim == 2 else None
        return out.hidden_states[-2].float(), pooled

    return encode


def encode_texts(encoders: Sequence[EncodeFn], text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(concatenated penultimate hidden states, the pooled embedding) of `text`."""
    hidden, pooled = [], None
    for encode in encoders:
        states, own_pooled = encode(text)
        hidden.append(states)
        pooled = pooled if pooled is not None else own_pooled
    if pooled is None:
        raise ValueError("no SDXL text encoder gives a pooled projection (text_encoder_2)")
    return torch.cat(hidden, dim=-1), pooled


def time_ids_fn(
    requires_aesthetics_score: bool,
    aesthetic_score: float = AESTHETIC_SCORE,
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE,
) -> Callable[[tuple[int, int], bool], list[float]]:
    """(output size, negative row?) -> the row of micro-conditioning numbers."""

    def time_ids(size: tuple[int, int], negative: bool) -> list[float]:
        crop = (0, 0)
        if requires_aesthetics_score:
            score = negative_aesthetic_score if negative else aesthetic_score
            return [*size, *crop, score]
        return [*size, *crop, *size]

    return time_ids


def sdxl_conditioner(
    encoders: Sequence[EncodeFn],
    time_ids: Callable[[tuple[int, int], bool], list[float]],
    force_zeros_for_empty_prompt: bool,
    dev: torch.device,
) -> ConditionFn:
    def condition(prompt: str, negative: str, guided: bool, size: tuple[int, int]) -> Conditioning:
        text, pooled = encode_texts(encoders, prompt)
        ids = torch.tensor([time_ids(size, False)], dtype=text.dtype, device=dev)
        cond = Conditioning(text, {"text_embeds": pooled, "time_ids": ids})
        if not guided:
            return cond
        if not negative and force_zeros_for_empty_prompt:
            neg_text, neg_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            neg_text, neg_pooled = encode_texts(encoders, negative)
        neg_ids = torch.tensor([time_ids(size, True)], dtype=text.dtype, device=dev)
        uncond = Conditioning(neg_text, {"text_embeds": neg_pooled, "time_ids": neg_ids})
        return Conditioning.cat([uncond, cond])

    return condition


def _check_added_dims(folder: Path, unet: Any, n_ids: int, pooled_dim: int) -> None:
    """The UNet's added embedding must take what we pass, as diffusers checks."""
    expected = int(unet.add_embedding.linear_1.in_features)
    passed = int(unet.config.addition_time_embed_dim) * n_ids + pooled_dim
    if expected != passed:
        raise ValueError(
            f"{folder}: the UNet's added embedding takes {expected} numbers, but {n_ids} time "
            f"ids and a {pooled_dim}-dim pooled embedding make {passed} (a refiner needs "
            "requires_aesthetics_score in model_index.json)"
        )


def load_sdxl_parts(
    folder: Path, device: str = "cpu", dtype: str = "fp32", graph: GraphOptions | None = None
) -> DiffusionParts:
    """An SDXL base or refiner folder, with each part's own from_pretrained, its
    UNet, text encoders and VAE in `dtype` (in fp16 a force_upcast VAE stays fp32);
    the UNet and VAE decode compiled or in channels_last as `graph` says."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    dev = torch.device(device)
    weights = torch_dtype(dtype)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    graph = graph or GraphOptions()
    vae, unet = load_vae_and_unet(folder, dev, weights, graph.channels_last)
    forward = unet_part(unet, graph)
    if unet.config.addition_embed_type != "text_time":
        raise ValueError(f"{folder}: an SDXL UNet has addition_embed_type text_time")
    encoders: list[EncodeFn] = []
    with quiet_hub_progress():
        # The refiner has no first encoder: model_index.json lists it as [null, null].
        for suffix, cls in (("", CLIPTextModel), ("_2", CLIPTextModelWithProjection)):
            if (index.get(f"text_encoder{suffix}") or [None])[0] is None:
                continue
            tokenizer = CLIPTokenizer.from_pretrained(folder / f"tokenizer{suffix}")
            part = folder / f"text_encoder{suffix}"
            model: Any = cls.from_pretrained(
                part, dtype=weights, variant=stored_variant(part, weights)
            )
            encoders.append(_encoder(tokenizer, model.to(dev).eval(), dev))
            last_tokenizer, last_model = tokenizer, model
    aesthetics = bool(index.get("requires_aesthetics_score", False))
    _check_added_dims(folder, unet, 5 if aesthetics else 6, last_model.config.projection_dim)

    # Inputs cast to the weights' dtype, outputs back to float32 (no-ops in fp32).
    def predict_noise(sample: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out: torch.Tensor = forward(
            sample.to(weights),
            t,
            encoder_hidden_states=cond.text.to(weights),
            added_cond_kwargs={k: v.to(weights) for k, v in cond.added.items()},
            return_dict=False,
        )[0]
        return out.float()

    def encode_text(ids: torch.Tensor) -> torch.Tensor:
        # The last encoder's penultimate states (the text path's own tests use it).
        states: torch.Tensor = last_model(ids.to(dev), output_hidden_states=True).hidden_states[-2]
        return states.float()

    shared = vae_parts(folder, vae, unet, dev, graph)
    return DiffusionParts(
        tokenize=clip_tokenize(last_tokenizer),
        encode_text=encode_text,
        condition=sdxl_conditioner(
            encoders,
            time_ids_fn(aesthetics),
            bool(index.get("force_zeros_for_empty_prompt", True)),
            dev,
        ),
        predict_noise=predict_noise,
        family=SDXL_FAMILY,
        # The uncompiled module: cache_interval > 1 runs every step eager.
        step_cache=StepCache(unet),
        **{**shared, "graphs": graphs_of(forward) + shared["graphs"]},
        weights_dtype=dtype,
    )
