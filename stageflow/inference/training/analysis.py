"""What a shapes image shows, read back deterministically (no model involved).

Background: the median colour of a 2-pixel border ring, snapped to the nearest
palette colour. Shape pixels: those whose nearest palette colour is not the
background. Shape colour: the palette colour nearest the median of the shape
pixels near the shape's centre. Shape: how much of its bounding box the shape
fills (ideally square 1.0, circle pi/4 = 0.79, triangle 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stageflow.inference.training.data import COLOURS, PALETTE, SHAPES, caption

RING = 2
# Fill-ratio cuts in the gaps between the shapes, measured both on rendered
# scenes (triangle 0.50-0.57, circle 0.72-0.84, square 0.98-1.0) and on the
# trained model's images, whose corners come out rounder (triangle up to 0.65,
# circle 0.71-0.80, square from 0.88).
TRIANGLE_BELOW = 0.675
SQUARE_ABOVE = 0.85
# Fewer shape pixels than this fraction of the image: no shape was drawn.
MIN_SHAPE_FRACTION = 0.03

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    shape: str | None
    colour: str | None
    background: str

    @property
    def caption(self) -> str:
        return caption(self.shape or "nothing", self.colour or "no", self.background)


def _nearest(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each RGB row."""
    distances = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1)
    return np.asarray(distances.argmin(-1))


def _measure(image: Image.Image) -> tuple[int, int | None, float]:
    """(background index, shape colour index or None, fill ratio of the shape's box)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    ring = np.ones((h, w), dtype=bool)
    ring[RING:-RING, RING:-RING] = False
    background = int(_nearest(np.median(pixels[ring], axis=0)))
    candidates = _nearest(pixels) != background
    if candidates.sum() < MIN_SHAPE_FRACTION * h * w:
        return background, None, 0.0
    # Edge pixels blend both colours; the median is the shape's own colour.
    colour = int(_nearest(np.median(pixels[candidates], axis=0)))
    # Two classes now: closer to the shape colour than to the background.
    to_shape = ((pixels - _PALETTE[colour]) ** 2).sum(-1)
    to_background = ((pixels - _PALETTE[background]) ** 2).sum(-1)
    mask = to_shape < to_background
    ys, xs = np.nonzero(mask)
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return background, colour, float(mask.sum()) / float(box_area)


def fill_ratio(image: Image.Image) -> float:
    """The fill ratio `read` bases its shape decision on (for calibration)."""
    return _measure(image)[2]


def read(image: Image.Image) -> Reading:
    background, colour, fill = _measure(image)
    if colour is None:
        return Reading(None, None, COLOURS[background])
    if fill < TRIANGLE_BELOW:
        shape = "triangle"
    elif fill > SQUARE_ABOVE:
        shape = "square"
    else:
        shape = "circle"
    return Reading(shape, COLOURS[colour], COLOURS[background])


def parse_caption(text: str) -> tuple[str, str, str]:
    """(shape, colour, background) of "a {colour} {shape} on a {background} background..."."""
    words = text.lower().replace(".", " ").split()
    try:
        colour, shape, _on, _a, background = words[1:6]
    except ValueError:
        raise ValueError(f"not a shapes caption: {text!r}") from None
    if shape not in SHAPES or colour not in PALETTE or background not in PALETTE:
        raise ValueError(f"not a shapes caption: {text!r}")
    return shape, colour, background


def score(image: Image.Image, text: str) -> bool:
    """True when shape, colour and background all match the caption."""
    reading = read(image)
    return (reading.shape, reading.colour, reading.background) == parse_caption(text)
