"""Step caching (DeepCache, Ma et al. 2023): fewer deep UNet evaluations per image.

A UNet's deep blocks change slowly from one denoising step to the next; its
shallow blocks carry the detail. So on a "full" step we run the whole UNet
and keep the features entering the up block at `depth` from the deeper path;
on the steps in between we run only the shallow branch (conv_in, the time and
added embeddings, down_blocks[0..depth], then the cached deep features and the
fresh skip connections through the up blocks from the matching depth, and
conv_out), skipping the mid block and the deeper down and up blocks.

`unet_forward` is our own forward over diffusers' `UNet2DConditionModel`
blocks, in the order of its `forward` (diffusers 0.42
`models/unets/unet_2d_condition.py`) for the inputs our stages pass (latents,
timestep, text hidden states, SDXL's `added_cond_kwargs`); with nothing
cached it computes exactly what `unet(...)` does (a unit test holds it to
that). Both guidance branches run as one batch, so the cache holds the batch.

Torch only: an ONNX Runtime or TensorRT export is one fused graph with no
block boundary to stop at; their parts have no `step_cache` and their stages
accept only cache_interval 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# The shallowest branch: down_blocks[0] and the last up block (DeepCache's default).
DEFAULT_DEPTH = 0


def _embeddings(
    unet: Any, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, added: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(time embedding with class/added embeddings, encoder hidden states): step 1
    of diffusers' forward, with no class labels and no timestep condition."""
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None and unet.config.class_embeddings_concat:
        emb = torch.cat([emb, class_emb], dim=-1)
    elif class_emb is not None:
        emb = emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=text, added_cond_kwargs=added)
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    text = unet.process_encoder_hidden_states(encoder_hidden_states=text, added_cond_kwargs=added)
    return emb, text


def _cross(block: Any) -> bool:
    return bool(getattr(block, "has_cross_attention", False))


def _down(block: Any, sample: torch.Tensor, emb: torch.Tensor, text: torch.Tensor) -> Any:
    if _cross(block):
        return block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=text,
            attention_mask=None,
            cross_attention_kwargs=None,
            encoder_attention_mask=None,
        )
    return block(hidden_states=sample, temb=emb)


def _mid(unet: Any, sample: torch.Tensor, emb: torch.Tensor, text: torch.Tensor) -> Any:
    if unet.mid_block is None:
        return sample
    if _cross(unet.mid_block):
        return unet.mid_block(
            sample,
            emb,
            encoder_hidden_states=text,
            attention_mask=None,
            cross_attention_kwargs=None,
            encoder_attention_mask=None,
        )
    return unet.mid_block(sample, emb)


def _up(
    block: Any,
    sample: torch.Tensor,
    emb: torch.Tensor,
    text: torch.Tensor,
    res: tuple[torch.Tensor, ...],
    size: Any,
) -> Any:
    if _cross(block):
        return block(
            hidden_states=sample,
            temb=emb,
            res_hidden_states_tuple=res,
            encoder_hidden_states=text,
            cross_attention_kwargs=None,
            upsample_size=size,
            attention_mask=None,
            encoder_attention_mask=None,
        )
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=size)


def check_depth(unet: Any, depth: int) -> None:
    levels = len(unet.down_blocks)
    if not 0 <= depth < levels:
        raise ValueError(f"step cache depth {depth}: this UNet has down blocks 0..{levels - 1}")


def unet_forward(
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    added: Mapping[str, torch.Tensor] | None = None,
    depth: int = DEFAULT_DEPTH,
    deep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted noise, the deep features entering up block `len - 1 - depth`).

    With `deep` None: the whole UNet, exactly as `unet(...)`. With `deep` (the
    features a full call returned, same batch and size): only the shallow
    branch down to `depth`, the cached features standing in for the rest.
    """
    check_depth(unet, depth)
    added_kwargs = dict(added) if added is not None else None
    up_factor = 2**unet.num_upsamplers
    # As diffusers: pass upsample sizes when a side is not a multiple of the factor.
    forward_upsample_size = any(dim % up_factor for dim in sample.shape[-2:])
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb, text = _embeddings(unet, sample, timestep, text, added_kwargs)
    sample = unet.conv_in(sample)
    res: tuple[torch.Tensor, ...] = (sample,)
    first_up = len(unet.up_blocks) - 1 - depth
    down_blocks = unet.down_blocks if deep is None else unet.down_blocks[: depth + 1]
    for block in down_blocks:
        sample, block_res = _down(block, sample, emb, text)
        res += block_res
    if deep is None:
        sample = _mid(unet, sample, emb, text)
        up_blocks = list(enumerate(unet.up_blocks))
    else:
        # The skip connections the shallow up blocks consume are a prefix of the
        # full run's (a full run's deeper up blocks take the rest, from its end).
        shallow = sum(len(b.resnets) for b in unet.up_blocks[first_up:])
        res, sample = res[:shallow], deep
        up_blocks = list(enumerate(unet.up_blocks))[first_up:]
    cached = sample
    for i, block in up_blocks:
        if i == first_up:
            cached = sample
        taken = len(block.resnets)
        block_res, res = res[-taken:], res[:-taken]
        size = res[-1].shape[2:] if i < len(unet.up_blocks) - 1 and forward_upsample_size else None
        sample = _up(block, sample, emb, text, block_res, size)
    if unet.conv_norm_out:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    out: torch.Tensor = unet.conv_out(sample)
    return out, cached


@dataclass
class CachedPredictor:
    """One run's noise predictor with step caching: a full UNet call on every
    `interval`-th call (the first included), the shallow branch over the last
    full call's deep features on the others. Holds per-run state: make one per
    denoise loop (`StepCache.predictor`)."""

    unet: Any
    weights: torch.dtype
    interval: int
    depth: int = DEFAULT_DEPTH
    calls: int = 0
    full_calls: int = 0
    _deep: torch.Tensor | None = field(default=None, repr=False)

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        full = self._deep is None or self.calls % self.interval == 0
        added = {k: v.to(self.weights) for k, v in cond.added.items()} or None
        out, deep = unet_forward(
            self.unet,
            sample.to(self.weights),
            t,
            cond.text.to(self.weights),
            added,
            self.depth,
            None if full else self._deep,
        )
        if full:
            self._deep = deep
            self.full_calls += 1
        self.calls += 1
        return out.float()


@dataclass(frozen=True)
class StepCache:
    """What a torch backend's parts offer for step caching: the UNet its
    partial forward runs over, in the weights' dtype, and the branch depth its
    cached steps rerun (down_blocks[0..depth]; bench/stepcache.py compares depths)."""

    unet: Any
    weights: torch.dtype = torch.float32
    depth: int = DEFAULT_DEPTH

    @property
    def levels(self) -> int:
        return len(self.unet.down_blocks)

    def predictor(self, interval: int, depth: int | None = None) -> CachedPredictor:
        """A fresh predictor for one run; `depth` None: this cache's own."""
        if interval < 1:
            raise ValueError(f"cache interval {interval}: must be >= 1")
        depth = self.depth if depth is None else depth
        check_depth(self.unet, depth)
        return CachedPredictor(self.unet, self.weights, interval, depth)
