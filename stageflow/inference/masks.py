"""Inpaint masks: white (255) marks pixels to repaint, black keeps the input.

The mask is blurred once in pixel space; the blurred mask both drives the
per-step latent blend (area-averaged down to latent size) and the final pixel
composite, so outside the blurred area the output is exactly the input.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from stageflow.inference.interface import Box


def box_to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    return (
        round(box.left * width),
        round(box.top * height),
        round(box.right * width),
        round(box.bottom * height),
    )


def mask_from_box(box: Box, size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box_to_pixels(box, *size))
    return mask


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def latent_mask(mask: Image.Image, factor: int) -> torch.Tensor:
    """(1, 1, H/f, W/f) in [0, 1]: each latent cell is its pixel block's mean."""
    small = mask.resize((mask.width // factor, mask.height // factor), Image.Resampling.BOX)
    array = np.asarray(small).astype(np.float32) / 255.0
    return torch.from_numpy(array.copy())[None, None]


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """mask * generated + (1 - mask) * original; exact where the mask is 0 or 255."""
    return Image.composite(generated, original.convert("RGB"), mask)
