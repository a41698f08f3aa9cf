"""ESRGAN-family x4 upscaler (RRDBNet), tiled so memory is bounded by tile size.

Tiling follows Real-ESRGAN's `tile_process`: each `tile_size` square of the
input is upscaled together with `tile_overlap` pixels of context on every side
(clamped at the image edge), and only the upscaled core is pasted into the
output. When the overlap covers the network's receptive radius
(`rrdbnet.receptive_radius`) the tiled result equals the untiled one up to
float rounding; a smaller overlap leaves faint seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from inference.base import LocalModel, check_cancelled
from inference.interface import (
    CancelledFn,
    ModelDescription,
    ProgressFn,
    StageInputs,
    StageKind,
    StageParams,
    UpscaleMode,
    UpscaleParams,
    check_side,
    param_ranges,
)
from serving.errors import FailedPrecondition, InvalidArgument

# Smaller tiles are all overlap and thousands of calls; refuse them.
MIN_TILE = 16


@dataclass(frozen=True)
class Tile:
    """Input pixel boxes (left, top, right, bottom): the core to keep and the
    padded region fed to the network."""

    core: tuple[int, int, int, int]
    padded: tuple[int, int, int, int]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    if tile <= 0:
        return [Tile((0, 0, width, height), (0, 0, width, height))]
    tiles = []
    for y in range(math.ceil(height / tile)):
        for x in range(math.ceil(width / tile)):
            left, top = x * tile, y * tile
            right, bottom = min(left + tile, width), min(top + tile, height)
            padded = (
                max(left - overlap, 0),
                max(top - overlap, 0),
                min(right + overlap, width),
                min(bottom + overlap, height),
            )
            tiles.append(Tile((left, top, right, bottom), padded))
    return tiles


class EsrganUpscaler(LocalModel):
    kind: ClassVar[StageKind] = StageKind.UPSCALE
    params_type: ClassVar[type] = UpscaleParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # torch's RRDBNet, or a compiled graph with the same signature (see inference.backends)
        self._net: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.scale = 4

    def _load_weights(self) -> None:
        self._net, self.scale = self.runtime.upscaler(self.path, self.backend_options)

    def _release_weights(self) -> None:
        self._net = None

    @property
    def net(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._net is None:
            raise FailedPrecondition(f"model {self.name} is not loaded")
        return self._net

    def describe(self) -> ModelDescription:
        # Sides here are the input image's; the output is `scale` times larger.
        return ModelDescription(
            kind=self.kind,
            identity=self.identity,
            min_side=1,
            max_side=self.max_side,
            size_multiple=1,
            param_ranges=param_ranges(UpscaleParams),
        )

    def validate(self, params: StageParams) -> None:
        super().validate(params)
        assert isinstance(params, UpscaleParams)
        if 0 < params.tile_size < MIN_TILE:
            raise InvalidArgument(
                "tile_size",
                f"must be 0 (whole image) or at least {MIN_TILE}, got {params.tile_size}",
            )

    def validate_inputs(self, params: StageParams, inputs: StageInputs) -> None:
        if inputs.image is None:
            raise FailedPrecondition("image: the upscale stage needs an input image")
        desc = self.describe()
        check_side("image", inputs.image.width, desc)
        check_side("image", inputs.image.height, desc)

    def run(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        self.validate(params)
        self.validate_inputs(params, inputs)
        assert isinstance(params, UpscaleParams) and inputs.image is not None
        image = inputs.image.convert("RGB")
        if params.mode == UpscaleMode.LANCZOS:
            check_cancelled(cancelled, 0, 1)
            out = image.resize(
                (image.width * self.scale, image.height * self.scale), Image.Resampling.LANCZOS
            )
            progress(1, 1)
            return out
        return self._learned(image, params, progress, cancelled)

    def _learned(
        self,
        image: Image.Image,
        params: UpscaleParams,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        s = self.scale
        array = np.asarray(image).astype(np.float32) / 255.0
        pixels = torch.from_numpy(array.transpose(2, 0, 1)[None].copy())
        out = torch.zeros((1, 3, image.height * s, image.width * s))
        tiles = tile_grid(image.width, image.height, params.tile_size, params.tile_overlap)
        with torch.inference_mode():
            for done, (core, region) in enumerate(self._upscaled(pixels, tiles, cancelled)):
                left, top, right, bottom = core
                out[:, :, top * s : bottom * s, left * s : right * s] = region
                progress(done + 1, len(tiles))
        result = (out.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(result)

    def _upscaled(
        self, pixels: torch.Tensor, tiles: list[Tile], cancelled: CancelledFn
    ) -> Iterator[tuple[tuple[int, int, int, int], torch.Tensor]]:
        """Yields each tile's core box and its upscaled core, one tile in memory."""
        s = self.scale
        for i, tile in enumerate(tiles):
            check_cancelled(cancelled, i, len(tiles))
            pl, pt, pr, pb = tile.padded
            cl, ct, cr, cb = tile.core
            upscaled = self.net(pixels[:, :, pt:pb, pl:pr].to(self.device)).float().cpu()
            core = upscaled[:, :, (ct - pt) * s : (cb - pt) * s, (cl - pl) * s : (cr - pl) * s]
            yield tile.core, core
