"""SRVGGNetCompact, Real-ESRGAN's compact upscaler (realesr-animevideov3, realesr-general).

Parameter names match `realesrgan.archs.srvgg_arch.SRVGGNetCompact`: `body` is
one list of conv, activation, conv, activation, ..., conv (`body.0` the first
conv, `body.1` its PReLU, ..., `body.<2 * num_conv + 2>` the last conv,
which makes `num_out_ch * scale**2` channels); `upsampler` is a PixelShuffle
and the output adds the nearest-upsampled input, so the net learns only the
residual over nearest-neighbour upscaling. All convs run at input
resolution: 1.2 M parameters for animevideov3 (64 features, 16 convs) against
RRDBNet x4plus' 16.7 M, at a fraction of the cost.

One of the upscaler architectures of `stageflow.inference.sr_archs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stageflow.inference.ncnn import (
    NcnnFormatError,
    NcnnGraph,
    check_complete,
    check_same_conv,
    conv_activation,
    place_weights,
)

ARCHITECTURE = "SRVGGNetCompact"

# Real-ESRGAN's act_type choices.
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "prelu": lambda feat: nn.PReLU(num_parameters=feat),
    "relu": lambda _feat: nn.ReLU(inplace=True),
    "leakyrelu": lambda _feat: nn.LeakyReLU(negative_slope=0.1, inplace=True),
}


@dataclass(frozen=True)
class SRVGGNetConfig:
    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_conv: int = 16
    scale: int = 4  # Real-ESRGAN's `upscale`
    act_type: str = "prelu"


Config = SRVGGNetConfig


class SRVGGNetCompact(nn.Module):
    """Maps an RGB image in [0, 1] (N, 3, H, W) to (N, 3, sH, sW)."""

    def __init__(self, config: SRVGGNetConfig) -> None:
        super().__init__()
        if config.act_type not in ACTIVATIONS:
            raise ValueError(
                f"act_type must be one of {sorted(ACTIVATIONS)}, got {config.act_type}"
            )
        if config.scale < 1:
            raise ValueError(f"scale must be at least 1, got {config.scale}")
        self.scale = config.scale
        feat, act = config.num_feat, ACTIVATIONS[config.act_type]
        layers: list[nn.Module] = [nn.Conv2d(config.num_in_ch, feat, 3, 1, 1), act(feat)]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(feat, feat, 3, 1, 1), act(feat)]
        layers.append(nn.Conv2d(feat, config.num_out_ch * config.scale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(config.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out + base


def build(config: SRVGGNetConfig) -> SRVGGNetCompact:
    return SRVGGNetCompact(config)


def receptive_radius(config: SRVGGNetConfig) -> int:
    """Every conv is 3x3 at input resolution: one pixel each."""
    return config.num_conv + 2


def _ncnn_config(graph: NcnnGraph) -> SRVGGNetConfig:
    convs, prelus = graph.of_type("Convolution"), graph.of_type("PReLU")
    shuffles, interps = graph.of_type("PixelShuffle"), graph.of_type("Interp")
    if len(convs) < 2 or len(prelus) != len(convs) - 1 or len(shuffles) != 1 or len(interps) != 1:
        raise NcnnFormatError(
            f"{len(convs)} convolutions, {len(prelus)} PReLU, {len(shuffles)} PixelShuffle, "
            f"{len(interps)} Interp: an SRVGGNetCompact has n convs, n - 1 PReLU, one of each other"
        )
    scale = shuffles[0].int_param(0)
    if shuffles[0].int_param(1) != 0:
        raise NcnnFormatError(f"layer {shuffles[0].name}: only PyTorch's pixel-shuffle order")
    interp = interps[0]
    scales = (interp.float_param(1, 1.0), interp.float_param(2, 1.0))
    if interp.int_param(0) != 1 or scales != (float(scale), float(scale)):
        raise NcnnFormatError(f"layer {interp.name}: expected a nearest x{scale} upsampling")
    last = convs[-1].int_param(0)
    if last % scale**2:
        raise NcnnFormatError(f"the last conv's {last} channels do not pixel-shuffle by {scale}")
    return SRVGGNetConfig(
        num_in_ch=convs[0].weights["weight"].shape[1],
        num_out_ch=last // scale**2,
        num_feat=convs[0].int_param(0),
        num_conv=len(convs) - 2,
        scale=scale,
    )


def from_ncnn(graph: NcnnGraph) -> tuple[SRVGGNetConfig, dict[str, np.ndarray]]:
    """Our state dict from an ncnn SRVGGNetCompact: its Convolution and PReLU
    layers, in file order, are `body.0`, `body.1`, ... (checked to alternate)."""
    config = _ncnn_config(graph)
    with torch.device("meta"):
        expected = dict(SRVGGNetCompact(config).named_parameters())
    state: dict[str, np.ndarray] = {}
    for index, layer in enumerate(graph.of_type("Convolution", "PReLU")):
        want = "Convolution" if index % 2 == 0 else "PReLU"
        if layer.type != want:
            raise NcnnFormatError(
                f"layer {layer.name} is {layer.type} where body.{index} is {want}"
            )
        if layer.type == "Convolution":
            check_same_conv(layer)
            if conv_activation(layer)[0] != "none":
                raise NcnnFormatError(f"layer {layer.name}: a fused activation where PReLU follows")
        parts = {"slope": "weight"} if layer.type == "PReLU" else {}
        place_weights(state, expected, layer, f"body.{index}", parts)
    check_complete(state, expected)
    return config, state
