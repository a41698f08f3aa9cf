"""Train the tiny x4 RRDBNet upscaler on procedural shapes.

High-resolution targets are drawn directly at 4x the input side; inputs are
their bicubic reductions (the classic super-resolution degradation). The net
predicts a residual over bicubic upsampling with its last conv starting at
zero, so training starts from bicubic and only has to learn sharper edges.
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
from PIL import Image

from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig, save_rrdbnet
from stageflow.inference.training import data

Log = Callable[[str], None]

ESRGAN_CONFIG = RRDBNetConfig(num_feat=16, num_block=1, num_grow_ch=8, scale=4, residual="bicubic")
LOW_SIDE = 32


@dataclass(frozen=True)
class UpscalerTrainSettings:
    seed: int = 0
    steps: int = 1200
    lr: float = 1e-3
    batch_size: int = 8


def pair(spec: data.ShapeSpec, low_side: int = LOW_SIDE) -> tuple[Image.Image, Image.Image]:
    """(low-resolution input, high-resolution target) of one scene."""
    high = data.render(spec, low_side * 4)
    low = high.resize((low_side, low_side), Image.Resampling.BICUBIC)
    return low, high


def _to_unit(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(data.to_array(images) * 0.5 + 0.5)


def train_upscaler(
    folder: Path, settings: UpscalerTrainSettings, log: Log = print
) -> dict[str, Any]:
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    net = RRDBNet(ESRGAN_CONFIG)
    with torch.no_grad():
        torch.nn.init.zeros_(net.conv_last.weight)
        if net.conv_last.bias is not None:
            torch.nn.init.zeros_(net.conv_last.bias)
    optim = torch.optim.AdamW(net.parameters(), lr=settings.lr)
    rng = np.random.default_rng(settings.seed + 11)
    combos = data.training_combinations()
    net.train()
    for step in range(settings.steps):
        pairs = [pair(data.random_spec(rng, combos)) for _ in range(settings.batch_size)]
        low = _to_unit([p[0] for p in pairs])
        high = _to_unit([p[1] for p in pairs])
        loss = F.l1_loss(net(low), high)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"upscaler step {step}: l1 {loss.item():.5f}")
    save_rrdbnet(net.eval(), ESRGAN_CONFIG, folder, dtype=torch.float16)
    log(f"upscaler training took {time.monotonic() - started:.0f} s")
    return {"settings": asdict(settings), "config": asdict(ESRGAN_CONFIG)}
