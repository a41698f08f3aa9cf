"""VAE decode in overlapping tiles, when a whole decode is too big.

The reference workflow's 2048 px decode ran out of memory: a VAE decoder's
activations grow with the image (128 channels at full resolution for SD
VAEs: ~0.5 GB per live tensor at 1024 px, ~2 GB at 2048 px; a whole 1024 px
decode peaked 4.1 GB here), and a graph
that materialises the mid-block attention (the ONNX export does; torch's
CPU SDPA does not) adds (h*w)^2 scores over the latent grid: 17 GB at
2048 px. Decoding tile by tile bounds the peak by the tile's size instead.

`TiledDecode.decode` decodes whole when the image is at most `above_side`
pixels a side and its estimated peak fits `budget_mb`, else in tiles of
`tile_side` pixels overlapping by `overlap` pixels, blended with linear
ramps across each overlap (a weighted mean, so every pixel's weights sum to
one). The tiles halve until one fits the budget. It works over any
backend's `decode_latents` (torch, ONNX Runtime), like diffusers'
AutoencoderKL.tiled_decode but independent of the runtime.

What tiling changes: the decoder's GroupNorms normalise over each tile,
not the whole image, and attention sees only its tile; so a tiled decode
is close to, not equal to, a whole one (the unit tests bound the gap on
the fixtures; docs/benchmarks.md has the real-size VAE's). Images at or
below `above_side` that fit the budget are decoded whole, bit-identical to
diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MiB = 1024 * 1024
# Full-resolution tensors of `base_channels` alive at once at the decoder's
# peak. Measured (bench/realscale.py): a whole 1024 px decode through the SD-size
# VAE in torch peaked 4.1 GB above the loaded process, ~7.3 such fp32 tensors
# after the VAE's own 335 MB of weights; 8 keeps the estimate above it.
LIVE_FULL_RES = 8
# The smallest latent tile a budget may shrink tiles to (64 px for SD).
MIN_TILE = 8


def decode_peak_bytes(
    batch: int,
    latent_h: int,
    latent_w: int,
    *,
    factor: int,
    base_channels: int,
    element_bytes: int = 4,
    quadratic_attention: bool = False,
) -> int:
    """An estimate of one decode's peak working memory (weights excluded)."""
    pixels = latent_h * factor * latent_w * factor
    peak = LIVE_FULL_RES * base_channels * pixels * element_bytes
    if quadratic_attention:
        # Scores and their softmax over the latent grid, one head.
        peak += 2 * (latent_h * latent_w) ** 2 * element_bytes
    return batch * peak


@dataclass(frozen=True)
class VaeTiling:
    """When and how the VAE decodes in tiles (pixels; the stage's settings)."""

    # Sides above this always decode in tiles; 0: never by size alone.
    above_side: int = 1536
    # Decodes estimated above this many MiB decode in tiles; 0: no budget.
    budget_mb: int = 0
    tile_side: int = 512
    overlap: int = 128


@dataclass(frozen=True)
class DecodeShape:
    """What the estimate needs to know about one decoder (from DiffusionParts)."""

    factor: int
    base_channels: int
    quadratic_attention: bool = False

    def peak_bytes(self, batch: int, latent_h: int, latent_w: int) -> int:
        return decode_peak_bytes(
            batch,
            latent_h,
            latent_w,
            factor=self.factor,
            base_channels=self.base_channels,
            quadratic_attention=self.quadratic_attention,
        )


@dataclass(frozen=True)
class TilePlan:
    """Latent tile side and overlap of one tiled decode."""

    tile: int
    overlap: int


def plan_tile(tiling: VaeTiling, shape: DecodeShape, latents: tuple[int, ...]) -> TilePlan | None:
    """How to decode `latents` (B, C, h, w) in tiles; None: whole. Tiles halve
    (their overlap with them, at most a quarter of a tile) until one fits the budget."""
    batch, _, h, w = latents
    budget = tiling.budget_mb * MiB
    too_big = tiling.above_side > 0 and max(h, w) * shape.factor > tiling.above_side
    over_budget = budget > 0 and shape.peak_bytes(batch, h, w) > budget
    if not (too_big or over_budget):
        return None
    tile = max(1, tiling.tile_side // shape.factor)
    while budget > 0 and tile > MIN_TILE and shape.peak_bytes(batch, tile, tile) > budget:
        tile //= 2
    return TilePlan(tile, min(tiling.overlap // shape.factor, tile // 4))


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return [*range(0, n - tile, stride), n - tile]


def _ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """Weights along one axis of a tile: rising over `lead`, falling over `trail`."""
    import torch

    weights = torch.ones(length)
    if lead > 0:
        weights[:lead] = (torch.arange(lead) + 0.5) / lead
    if trail > 0:
        weights[length - trail :] = torch.minimum(
            weights[length - trail :], (torch.arange(trail - 1, -1, -1) + 0.5) / trail
        )
    return weights


def tiled_decode(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    tile: int,
    overlap: int,
    factor: int,
) -> torch.Tensor:
    """`decode(latents)`, tile by tile: latent tiles of `tile` overlapping by
    `overlap`, blended over the overlap in pixel space."""
    import torch

    _, _, h, w = latents.shape
    overlap = min(overlap, tile // 2)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h * factor, w * factor)
    for y in _starts(h, tile, overlap):
        for x in _starts(w, tile, overlap):
            th, tw = min(tile, h - y), min(tile, w - x)
            image = decode(latents[:, :, y : y + th, x : x + tw]).float()
            if out is None:
                out = torch.zeros(image.shape[0], image.shape[1], h * factor, w * factor)
            blend = overlap * factor
            wy = _ramp(th * factor, blend if y > 0 else 0, blend if y + th < h else 0)
            wx = _ramp(tw * factor, blend if x > 0 else 0, blend if x + tw < w else 0)
            weight = wy[:, None] * wx[None, :]
            rows = slice(y * factor, (y + th) * factor)
            cols = slice(x * factor, (x + tw) * factor)
            out[:, :, rows, cols] += image * weight
            total[:, :, rows, cols] += weight
    assert out is not None
    return out / total
