"""RRDBNet, the ESRGAN / Real-ESRGAN generator, with Real-ESRGAN's parameter names.

Parameter names match `basicsr.archs.rrdbnet_arch.RRDBNet` (conv_first,
body.N.rdb{1,2,3}.conv{1..5}, conv_body, conv_up1, conv_up2, conv_hr,
conv_last), so a real RealESRGAN_x4plus state dict (num_feat 64, num_block 23,
num_grow_ch 32) loads with `load_rrdbnet` unchanged. Only the x4 layout is
implemented: x2/x1 variants pixel-unshuffle their input first.

On-disk format: `config.json` (RRDBNetConfig fields) + `model.safetensors`;
a `.pth` from the Real-ESRGAN release also loads (its `params_ema` entry).
Weights stored in fp16 load into the model's float32 parameters. This is one
of the upscaler architectures of `stageflow.inference.sr_archs`; `from_ncnn`
maps an ncnn RRDBNet graph (realesrgan-x4plus.param/.bin) onto these names.

`residual: "bicubic"` in the config makes the network predict a correction
over bicubic upsampling (our trained fixture; a small net learns that far
better than the whole image). The default, `"none"`, is Real-ESRGAN's own
forward, so released weights load and behave unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stageflow.inference import sr_archs
from stageflow.inference.ncnn import (
    NcnnFormatError,
    NcnnGraph,
    check_complete,
    check_same_conv,
    conv_activation,
    place_weights,
)

ARCHITECTURE = "RRDBNet"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class RRDBNetConfig:
    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    # "none" (Real-ESRGAN) or "bicubic": output = net(x) + bicubic x4 of x.
    residual: str = "none"


RESIDUALS = ("none", "bicubic")


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        # ESRGAN's init: small residual branches keep a deep untrained net stable.
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data *= 0.1
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """Maps an RGB image in [0, 1] (N, 3, H, W) to (N, 3, 4H, 4W)."""

    def __init__(self, config: RRDBNetConfig) -> None:
        super().__init__()
        if config.scale != 4:
            raise ValueError(f"only scale 4 is implemented, got {config.scale}")
        if config.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {config.residual!r}")
        self.residual = config.residual
        nf = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out: torch.Tensor = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if self.residual == "bicubic":
            out = out + F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        return out


def receptive_radius(config: RRDBNetConfig) -> int:
    """Input pixels on each side that influence one output pixel (rounded up).

    Every 3x3 conv at input resolution adds 1; each RDB's deepest path is 5
    convs; the convs after upsampling add 1/2 + 3 * 1/4 input pixels.
    """
    return 1 + 15 * config.num_block + 1 + 2


def save_rrdbnet(
    model: RRDBNet, config: RRDBNetConfig, folder: Path, dtype: torch.dtype = torch.float32
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    body = {"architecture": ARCHITECTURE, **dataclasses.asdict(config)}
    if config.residual == "none":
        # Older readers know no `residual` key; write it only when it matters.
        del body["residual"]
    (folder / CONFIG_FILE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def read_config(folder: Path) -> RRDBNetConfig:
    raw = json.loads((folder / CONFIG_FILE).read_text())
    if raw.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise ValueError(f"{folder}: architecture {raw['architecture']!r} is not {ARCHITECTURE}")
    names = {f.name for f in dataclasses.fields(RRDBNetConfig)}
    return RRDBNetConfig(**{k: v for k, v in raw.items() if k in names})


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or else the first *.pth (Real-ESRGAN release layout)."""
    return sr_archs.read_state_dict(folder)


def load_rrdbnet(folder: Path) -> tuple[RRDBNet, RRDBNetConfig]:
    config = read_config(folder)
    model = RRDBNet(config)
    # strict: a renamed or missing parameter must fail loudly, not run random.
    # load_state_dict copies into the float32 parameters: fp16 files upcast here.
    model.load_state_dict(read_state_dict(folder), strict=True)
    return model.eval(), config


# -- the sr_archs interface ----------------------------------------------------------

Config = RRDBNetConfig


def build(config: RRDBNetConfig) -> RRDBNet:
    return RRDBNet(config)


# Convs followed by LeakyReLU(0.2): every dense-block conv but the fifth, and the
# upsampling convs; conv_first, conv5, conv_body and conv_last have none.
_LRELU_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv_up1", "conv_up2", "conv_hr")
# The convs outside the RRDB trunk: conv_first, conv_body, conv_up1, conv_up2, conv_hr, conv_last.
_OUTER_CONVS = 6
_CONVS_PER_BLOCK = 15


def _ncnn_config(graph: NcnnGraph) -> RRDBNetConfig:
    """The config an ncnn RRDBNet graph implies, from its layer counts and shapes."""
    convs = graph.of_type("Convolution")
    counts = graph.type_counts()
    blocks, rest = divmod(len(convs) - _OUTER_CONVS, _CONVS_PER_BLOCK)
    if blocks < 1 or rest or "PReLU" in counts or "PixelShuffle" in counts:
        raise NcnnFormatError(
            f"{len(convs)} convolutions and layer types {sorted(counts)} are not an RRDBNet's "
            f"(6 + 15 per block, no PReLU or PixelShuffle)"
        )
    if counts.get("Eltwise", 0) != 4 * blocks:
        raise NcnnFormatError(f"{blocks} blocks need {4 * blocks} residual sums (Eltwise)")
    interps = graph.of_type("Interp")
    for interp in interps:
        scales = (interp.float_param(1, 1.0), interp.float_param(2, 1.0))
        if interp.int_param(0) != 1 or scales != (2.0, 2.0):
            raise NcnnFormatError(f"layer {interp.name}: expected a nearest x2 upsampling")
    if len(interps) != 2:
        raise NcnnFormatError(f"{len(interps)} upsamplings: only the x4 layout (two x2) is known")
    first, grow, last = (convs[0], convs[1], convs[-1])
    return RRDBNetConfig(
        num_in_ch=first.weights["weight"].shape[1],
        num_out_ch=last.int_param(0),
        scale=4,
        num_feat=first.int_param(0),
        num_block=blocks,
        num_grow_ch=grow.int_param(0),
    )


def from_ncnn(graph: NcnnGraph) -> tuple[RRDBNetConfig, dict[str, np.ndarray]]:
    """Our state dict from an ncnn RRDBNet: convolutions in file order are the
    network's convs in registration order; shapes and fused activations are
    checked conv by conv, so a graph wired otherwise fails here, not at runtime."""
    config = _ncnn_config(graph)
    with torch.device("meta"):
        expected = dict(RRDBNet(config).named_parameters())
    names = [n.removesuffix(".weight") for n in expected if n.endswith(".weight")]
    state: dict[str, np.ndarray] = {}
    for name, layer in zip(names, graph.of_type("Convolution"), strict=True):
        check_same_conv(layer)
        act, slope = conv_activation(layer)
        want = ("leakyrelu", 0.2) if name.rsplit(".", 1)[-1] in _LRELU_CONVS else ("none", 0.0)
        if (act, round(slope, 6)) != want:
            raise NcnnFormatError(
                f"layer {layer.name} ({name}): activation {act}, expected {want[0]}"
            )
        place_weights(state, expected, layer, name)
    check_complete(state, expected)
    return config, state
