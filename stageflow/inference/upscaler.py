"""ESRGAN-family upscaler, tiled so memory is bounded by tile size.

The network is any architecture of `stageflow.inference.sr_archs` (RRDBNet,
SRVGGNetCompact: Real-ESRGAN's x4plus and animevideov3), loaded by the backend.
Tiling follows Real-ESRGAN's `tile_process`: each `tile_size` square of the
input is upscaled together with `tile_overlap` pixels of context on every side
(clamped at the image edge), and only the upscaled core is pasted into the
output. When the overlap covers the network's receptive radius
(`sr_archs.receptive_radius`) the tiled result equals the untiled one up to
float rounding; a smaller overlap leaves faint seams (for x4plus the radius is
349 px, but the weights far from the centre are tiny: docs/quality.md measures
the seams at the default overlap).

Dynamic batching (`run_batch`) batches *tiles*: the tiles of several requests
that share a padded shape run through the network together, at most one tile
per request at a time, so a batch of N requests holds at most N tiles in
memory — the same bound as N calls running one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.inference import compiled, hardware
from stageflow.inference.base import LocalModel, check_cancelled
from stageflow.inference.interface import (
    CancelledFn,
    ModelDescription,
    ProgressFn,
    StageInputs,
    StageKind,
    StageOutput,
    StageParams,
    UpscaleMode,
    UpscaleParams,
    check_side,
    param_ranges,
)

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
    # dtype=auto: bf16 on an AMX CPU, whatever the size (hardware.UPSCALER_AUTO_BF16),
    # fp32 elsewhere; channels_last auto: on. The tiles are blended in float32
    # whatever the network's dtype.
    auto_bf16: ClassVar[hardware.AutoBf16] = hardware.UPSCALER_AUTO_BF16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # torch's RRDBNet, or a compiled graph with the same signature
        # (see stageflow.inference.backends)
        self._net: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.scale = 4

    def _choose_layout(self, dtype: str) -> tuple[bool, str]:
        # auto: on, in any dtype; every upscaler and CPU measured ran faster in it
        # (1.26-2.05x in fp32, with AMX and without: bench/upscale_dtype.py).
        if self.channels_last != compiled.AUTO or not self.runtime.takes_graph_options:
            return super()._choose_layout(dtype)
        return True, f"auto: on, the torch upscaler runs faster in channels_last ({dtype})"

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
            raise InvalidArgument("image", "is required: the upscale stage reads an input image")
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

    def batch_key(self, params: StageParams) -> Hashable | None:
        # Lanczos is one Pillow call: nothing to batch. Learned calls batch
        # by tiling; images may differ in size (tiles are grouped by shape).
        assert isinstance(params, UpscaleParams)
        if params.mode != UpscaleMode.LEARNED:
            return None
        return (params.tile_size, params.tile_overlap)

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        """Learned upscales of several images, their same-shape tiles run as one
        network call; each output equals its single run up to float rounding."""
        batch = [p for p in params_list if isinstance(p, UpscaleParams)]
        if not batch or len(batch) != len(params_list) or len(batch) != len(inputs_list):
            raise InvalidArgument("params", "run_batch takes one UpscaleParams per input")
        first = batch[0]
        for params, inputs in zip(batch, inputs_list, strict=True):
            self.validate(params)
            self.validate_inputs(params, inputs)
            if params.mode != UpscaleMode.LEARNED or self.batch_key(params) != self.batch_key(
                first
            ):
                raise InvalidArgument(
                    "params", "a batch needs learned mode and equal tile_size, tile_overlap"
                )
        images = [inputs.image.convert("RGB") for inputs in inputs_list if inputs.image]
        pixels = [_to_tensor(image) for image in images]
        outs = [torch.zeros((1, 3, i.height * self.scale, i.width * self.scale)) for i in images]
        # Tiles of every image grouped by padded shape, in order within a group.
        groups: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        for index, image in enumerate(images):
            for tile in tile_grid(image.width, image.height, first.tile_size, first.tile_overlap):
                left, top, right, bottom = tile.padded
                groups.setdefault((bottom - top, right - left), []).append((index, tile))
        total = sum(len(items) for items in groups.values())
        done = 0
        with torch.inference_mode():
            for items in groups.values():
                for start in range(0, len(items), len(images)):
                    chunk = items[start : start + len(images)]
                    check_cancelled(cancelled, done, total)
                    crops = [_crop(pixels[index], tile.padded) for index, tile in chunk]
                    upscaled = self.net(torch.cat(crops).to(self.device)).float().cpu()
                    for (index, tile), one in zip(chunk, upscaled.split(1), strict=True):
                        self._paste(outs[index], tile, one)
                    done += len(chunk)
                    progress(done, total)
        return [StageOutput(_to_image(out)) for out in outs]

    def _learned(
        self,
        image: Image.Image,
        params: UpscaleParams,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        pixels = _to_tensor(image)
        out = torch.zeros((1, 3, image.height * self.scale, image.width * self.scale))
        tiles = tile_grid(image.width, image.height, params.tile_size, params.tile_overlap)
        with torch.inference_mode():
            # One tile in memory at a time: the bound tiling exists for.
            for done, tile in enumerate(tiles):
                check_cancelled(cancelled, done, len(tiles))
                upscaled = self.net(_crop(pixels, tile.padded).to(self.device)).float().cpu()
                self._paste(out, tile, upscaled)
                progress(done + 1, len(tiles))
        return _to_image(out)

    def _paste(self, out: torch.Tensor, tile: Tile, upscaled: torch.Tensor) -> None:
        """Write the core of one upscaled padded tile into `out`."""
        s = self.scale
        pl, pt, _, _ = tile.padded
        cl, ct, cr, cb = tile.core
        core = upscaled[:, :, (ct - pt) * s : (cb - pt) * s, (cl - pl) * s : (cr - pl) * s]
        out[:, :, ct * s : cb * s, cl * s : cr * s] = core


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image).astype(np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1)[None].copy())


def _to_image(out: torch.Tensor) -> Image.Image:
    result = (out.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(result)


def _crop(pixels: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    left, top, right, bottom = box
    return pixels[:, :, top:bottom, left:right]
