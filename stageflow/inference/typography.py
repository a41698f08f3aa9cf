"""Overlay text drawn exactly: placement, auto-fit size, contrast colour, mask.

Pure Pillow (no torch, no grpc). The typography pass draws the text here first,
so the letters are right by construction; a diffusion pass then only
harmonises the region under `RenderedText.mask` with the image, and OCR checks
that it stayed legible (see `stageflow.inference.text_pass`).

The font is DejaVu Sans, committed under `inference/fonts/` with its licence:
the same file everywhere means the same pixels everywhere.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageFont

from stageflow.core import limits
from stageflow.inference.interface import Box, TextPlacement

FONT_PATH = Path(__file__).resolve().parent / "fonts" / "DejaVuSans.ttf"

RGB = tuple[int, int, int]
PixelBox = tuple[int, int, int, int]

BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)
# Candidate text colours; the one with the highest WCAG contrast against the
# region behind the text wins. Black and white always reach at least 4.58:1.
PALETTE: tuple[RGB, ...] = (BLACK, WHITE)

MIN_FONT_SIZE = 4
MAX_TEXT_CHARS = limits.MAX_TEXT_CHARS


# Each placement is a full-width band; BOTTOM is the orchestrator's text band.
PLACEMENT_BOXES: dict[TextPlacement, Box] = {
    TextPlacement.BOTTOM: Box(0.0, 0.78, 1.0, 1.0),
    TextPlacement.TOP: Box(0.0, 0.0, 1.0, 0.22),
    TextPlacement.CENTER: Box(0.0, 0.39, 1.0, 0.61),
}


@dataclass(frozen=True)
class TextStyle:
    """How to lay the text out; every field has a usable default."""

    placement: TextPlacement = TextPlacement.BOTTOM
    # A box in fractions of the image; when set it replaces `placement`.
    box: Box | None = None
    # None: the palette colour with the best contrast against the region.
    color: RGB | None = None
    # Outline width as a fraction of the font size (0: none), in the contrasting colour.
    stroke: float = 0.0
    shadow: bool = False
    # Space kept free inside the box on every side, as a fraction of its shorter side.
    margin: float = 0.1


@dataclass(frozen=True)
class RenderedText:
    image: Image.Image  # the input with the text drawn on it (RGB)
    mask: Image.Image  # "L": 255 where glyphs, outline or shadow cover, anti-aliased
    box: PixelBox  # the box the text was fitted into
    text_box: PixelBox  # where ink was actually drawn (glyphs, outline, shadow)
    font_size: int
    fill: RGB
    outline: RGB | None  # stroke / shadow colour, when used


@functools.lru_cache(maxsize=256)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


def parse_color(value: str) -> RGB:
    """'#rrggbb', '#rgb' or a CSS colour name -> RGB; ValueError otherwise."""
    r, g, b = ImageColor.getrgb(value)[:3]
    return (r, g, b)


def _linear(channel: float) -> float:
    c = channel / 255.0
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0 black .. 1 white)."""
    r, g, b = (_linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """WCAG contrast ratio, 1 (same) .. 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def pick_color(background: tuple[float, float, float], palette: tuple[RGB, ...] = PALETTE) -> RGB:
    """The palette colour that contrasts most with `background`."""
    return max(palette, key=lambda c: contrast_ratio(c, background))


def region_mean(image: Image.Image, box: PixelBox) -> tuple[float, float, float]:
    pixels = np.asarray(image.convert("RGB").crop(box), dtype=np.float64)
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    return (float(r), float(g), float(b))


def box_pixels(box: Box, size: tuple[int, int]) -> PixelBox:
    width, height = size
    return (
        round(box.left * width),
        round(box.top * height),
        round(box.right * width),
        round(box.bottom * height),
    )


@functools.cache
def _notdef_signature() -> tuple[tuple[float, ...], bytes]:
    # A private-use code point no font maps: what the font draws for a missing glyph.
    return _glyph_signature("\U000f0000")


def _glyph_signature(char: str) -> tuple[tuple[float, ...], bytes]:
    f = font(32)
    return tuple(f.getbbox(char)), bytes(f.getmask(char))


@functools.lru_cache(maxsize=4096)
def has_glyph(char: str) -> bool:
    if char.isspace():
        return True
    return _glyph_signature(char) != _notdef_signature()


def text_problem(text: str) -> str | None:
    """Why `text` cannot be rendered on one line with this font, or None."""
    # The rules the orchestrator checks at submit too (stageflow.core.limits).
    problem = limits.text_chars_problem(text)
    if problem:
        return problem
    missing = sorted({c for c in text if not has_glyph(c)})
    if missing:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:5])
        return f"has characters the font (DejaVu Sans) cannot draw: {shown}"
    return None


def _stroke_px(size: int, stroke: float) -> int:
    return round(size * stroke) if stroke > 0 else 0


def _shadow_px(size: int, shadow: bool) -> int:
    return max(1, round(size * 0.06)) if shadow else 0


def text_extent(text: str, size: int, stroke: float = 0.0, shadow: bool = False) -> tuple[int, int]:
    """Width and height the text takes at `size`, outline and shadow included.

    Height is the font's line height (ascent + descent), not the ink of this
    string, so "ace" and "Ågy" get the same size in the same box.
    """
    f = font(size)
    sw = _stroke_px(size, stroke)
    left, _, right, _ = f.getbbox(text, stroke_width=sw, anchor="ls")
    ascent, descent = f.getmetrics()
    extra = _shadow_px(size, shadow)
    return math.ceil(right - left) + extra, ascent + descent + 2 * sw + extra


def fit_font_size(
    text: str, width: int, height: int, stroke: float = 0.0, shadow: bool = False
) -> int:
    """The largest size whose text fits in width x height (at least MIN_FONT_SIZE)."""
    lo, hi = MIN_FONT_SIZE, max(MIN_FONT_SIZE, height)
    if not _fits(text, lo, width, height, stroke, shadow):
        return lo
    # Extent grows with size (up to hinting noise): bisect, then step down if needed.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(text, mid, width, height, stroke, shadow):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fits(text: str, size: int, width: int, height: int, stroke: float, shadow: bool) -> bool:
    w, h = text_extent(text, size, stroke, shadow)
    return w <= width and h <= height


def render_text(image: Image.Image, text: str, style: TextStyle = TextStyle()) -> RenderedText:
    """Draw `text` on a copy of `image`, centred in its box, as large as fits."""
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(f"text {problem}")
    base = image.convert("RGB")
    box = box_pixels(style.box or PLACEMENT_BOXES[style.placement], base.size)
    left, top, right, bottom = box
    margin = round(style.margin * min(right - left, bottom - top))
    inner_w, inner_h = right - left - 2 * margin, bottom - top - 2 * margin
    size = fit_font_size(text, max(inner_w, 1), max(inner_h, 1), style.stroke, style.shadow)

    fill = style.color or pick_color(region_mean(base, box))
    outline = pick_color(fill) if (style.stroke > 0 or style.shadow) else None
    f = font(size)
    sw = _stroke_px(size, style.stroke)
    shadow = _shadow_px(size, style.shadow)
    ascent, descent = f.getmetrics()
    # Centre the line box (ascent + descent) in the fitted box, anchored on the baseline.
    cx = (left + right - shadow) / 2
    baseline = (top + bottom - shadow) / 2 + (ascent - descent) / 2

    out = base.copy()
    mask = Image.new("L", base.size, 0)
    draw, mask_draw = ImageDraw.Draw(out), ImageDraw.Draw(mask)
    if shadow:
        assert outline is not None
        at = (cx + shadow, baseline + shadow)
        draw.text(at, text, font=f, fill=outline, anchor="ms", stroke_width=sw, stroke_fill=outline)
        mask_draw.text(at, text, font=f, fill=255, anchor="ms", stroke_width=sw, stroke_fill=255)
    draw.text(
        (cx, baseline), text, font=f, fill=fill, anchor="ms", stroke_width=sw, stroke_fill=outline
    )
    mask_draw.text((cx, baseline), text, font=f, fill=255, anchor="ms", stroke_width=sw)
    ink = mask.getbbox() or box
    return RenderedText(
        image=out,
        mask=mask,
        box=box,
        text_box=ink,
        font_size=size,
        fill=fill,
        outline=outline,
    )


def dilate(mask: Image.Image, radius: int) -> Image.Image:
    """Grow the white area by `radius` pixels (a square max filter)."""
    return mask.filter(ImageFilter.MaxFilter(2 * radius + 1)) if radius > 0 else mask


def padded_box(box: PixelBox, size: tuple[int, int], pad: int) -> PixelBox:
    left, top, right, bottom = box
    width, height = size
    return (
        max(0, left - pad),
        max(0, top - pad),
        min(width, right + pad),
        min(height, bottom + pad),
    )
