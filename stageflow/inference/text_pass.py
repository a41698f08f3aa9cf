"""The typography pass: exact text, a light inpaint to harmonise it, an OCR check.

1. Draw the text exactly (`stageflow.inference.typography`): right letters by construction.
2. Inpaint over the text's mask, dilated and blurred by `inpaint_mask_blur`, at
   the request's (low) strength, so the letters take on the image's look.
3. Read the line back with OCR; accept when the character error rate is at most
   `max_cer`. Otherwise retry with the next seed, up to `max_attempts` passes,
   then fall back to the exact render of step 1 and say so in the `TextCheck`.

The diffusion model comes in as a `Harmonise` callable, so this module runs
(and is tested) without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference import masks
from stageflow.inference.interface import ProgressFn, RefineParams, StageOutput, TextCheck
from stageflow.inference.ocr import cer, normalize
from stageflow.inference.typography import (
    PixelBox,
    RenderedText,
    TextStyle,
    dilate,
    padded_box,
    parse_color,
    render_text,
    text_problem,
)

# (image with the text drawn, inpaint mask, seed, progress) -> harmonised image
Harmonise = Callable[[Image.Image, Image.Image, int, ProgressFn], Image.Image]

SEED_MODULUS = 2**63


class LineReader(Protocol):
    def read(self, image: Image.Image) -> str: ...


def check_text_params(params: RefineParams) -> None:
    """InvalidArgument for text the pass cannot draw, or options it cannot honour."""
    problem = text_problem(params.text)
    if problem is not None:
        raise InvalidArgument("text", problem)
    if params.text_color:
        try:
            parse_color(params.text_color)
        except ValueError:
            raise InvalidArgument(
                "text_color", f"must be '#rrggbb' or a CSS colour name, got {params.text_color!r}"
            ) from None
    if params.mask_box is not None:
        raise InvalidArgument(
            "mask_box", "must be unset with text: the pass inpaints the text's own mask"
        )


def style_of(params: RefineParams) -> TextStyle:
    return TextStyle(
        placement=params.text_placement,
        box=params.text_box,
        color=parse_color(params.text_color) if params.text_color else None,
        stroke=params.text_stroke,
        shadow=params.text_shadow,
    )


def inpaint_mask(rendered: RenderedText, blur: int) -> Image.Image:
    """The glyph mask grown by ~1/10 of the font size (so the pass reaches the
    letters' surroundings, not only their ink), then blurred by `blur`."""
    grown = dilate(rendered.mask, max(1, rendered.font_size // 10))
    return masks.blur_mask(grown, blur)


def line_box(rendered: RenderedText, size: tuple[int, int]) -> PixelBox:
    """The crop OCR reads: the drawn line with a third of the font size around it."""
    return padded_box(rendered.text_box, size, max(2, rendered.font_size // 3))


def aligned_box(box: PixelBox, size: tuple[int, int], multiple: int) -> PixelBox:
    """`box` grown to sides that are multiples of `multiple`, kept inside the image.

    The image's own sides must be multiples of `multiple` (the stage checks that).
    """
    width, height = size

    def span(lo: int, hi: int, limit: int) -> tuple[int, int]:
        length = min(limit, max(multiple, math.ceil((hi - lo) / multiple) * multiple))
        start = max(0, min(lo - (length - (hi - lo)) // 2, limit - length))
        return start, start + length

    left, right = span(box[0], box[2], width)
    top, bottom = span(box[1], box[3], height)
    return left, top, right, bottom


class _StepCounter:
    """Progress across attempts: steps keep counting up, and the total grows
    by one pass when a retry starts (a first-try success ends at n of n)."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self._done = 0

    def attempt(self) -> ProgressFn:
        offset = self._done

        def report(step: int, total: int) -> None:
            self._done = offset + step
            self._progress(offset + step, offset + total)

        return report


def run_text_pass(
    image: Image.Image,
    params: RefineParams,
    harmonise: Harmonise,
    reader: LineReader,
    progress: ProgressFn,
) -> StageOutput:
    """The pass over `image`; `harmonise` checks for cancellation between its steps."""
    rendered = render_text(image.convert("RGB"), params.text, style_of(params))
    mask = inpaint_mask(rendered, params.inpaint_mask_blur)
    line = line_box(rendered, image.size)
    counter = _StepCounter(progress)
    cers: list[float] = []
    for attempt in range(params.max_attempts):
        seed = (params.seed + attempt) % SEED_MODULUS
        out = harmonise(rendered.image, mask, seed, counter.attempt())
        read = reader.read(out.crop(line))
        cers.append(cer(params.text, read))
        if cers[-1] <= params.max_cer:
            return StageOutput(out, _check(params.text, read, cers, fell_back=False))
    read = reader.read(rendered.image.crop(line))
    return StageOutput(rendered.image, _check(params.text, read, cers, fell_back=True))


def _check(text: str, read: str, cers: list[float], *, fell_back: bool) -> TextCheck:
    error = cer(text, read)
    return TextCheck(
        text=text,
        ocr_text=read,
        cer=error,
        exact=normalize(read) == normalize(text),
        attempts=len(cers),
        fell_back=fell_back,
        attempt_cers=tuple(cers),
    )
