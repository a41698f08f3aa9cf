"""Exact text rendering, OCR read-back and the character error rate."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stageflow.inference.interface import Box, TextPlacement
from stageflow.inference.ocr import TextReader, cer, levenshtein, normalize
from stageflow.inference.typography import (
    BLACK,
    FONT_PATH,
    WHITE,
    TextStyle,
    contrast_ratio,
    fit_font_size,
    pick_color,
    render_text,
    text_extent,
    text_problem,
)


def flat(color: tuple[int, int, int], size: tuple[int, int] = (512, 512)) -> Image.Image:
    return Image.new("RGB", size, color)


def noisy(seed: int = 0, size: int = 512) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(60, 200, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader()


def test_the_font_ships_with_its_licence() -> None:
    assert FONT_PATH.is_file()
    licence = (FONT_PATH.parent / "LICENSE-DejaVu.txt").read_text()
    assert "Bitstream Vera" in licence


@pytest.mark.parametrize("text", ["Hi", "Chapter One", "A much longer line of overlay text!"])
def test_auto_fit_is_the_largest_size_inside_the_box(text: str) -> None:
    size = fit_font_size(text, 400, 90)
    w, h = text_extent(text, size)
    assert w <= 400 and h <= 90
    w, h = text_extent(text, size + 1)
    assert w > 400 or h > 90


@pytest.mark.parametrize("placement", list(TextPlacement))
def test_glyphs_stay_inside_the_placement_band(placement: TextPlacement) -> None:
    rendered = render_text(flat((40, 40, 40)), "Chapter One", TextStyle(placement=placement))
    left, top, right, bottom = rendered.box
    ink = rendered.text_box
    assert left <= ink[0] and top <= ink[1] and ink[2] <= right and ink[3] <= bottom
    # Fitted, not tiny: the line fills most of the band's height or width.
    assert (ink[3] - ink[1]) > 0.5 * (bottom - top) or (ink[2] - ink[0]) > 0.7 * (right - left)


def test_a_box_replaces_the_placement() -> None:
    box = Box(0.5, 0.1, 0.95, 0.3)
    rendered = render_text(flat((40, 40, 40)), "Sale", TextStyle(box=box))
    assert rendered.box == (256, 51, 486, 154)
    assert rendered.box[0] <= rendered.text_box[0] and rendered.text_box[2] <= rendered.box[2]


def test_colour_is_chosen_for_contrast_with_the_region() -> None:
    assert render_text(flat((20, 20, 60)), "Night").fill == WHITE
    assert render_text(flat((240, 230, 200)), "Day").fill == BLACK
    # Only the text's region counts: a dark top over a light bottom band gets black text.
    image = flat((10, 10, 10))
    image.paste((250, 250, 250), (0, 400, 512, 512))
    assert render_text(image, "Bottom", TextStyle(placement=TextPlacement.BOTTOM)).fill == BLACK
    assert render_text(image, "Top", TextStyle(placement=TextPlacement.TOP)).fill == WHITE
    assert contrast_ratio(BLACK, WHITE) == pytest.approx(21.0)
    # Mid grey: the better of the two by WCAG ratio (black here), at least 4.5:1.
    grey = (128, 128, 128)
    assert pick_color(grey) == BLACK and contrast_ratio(BLACK, grey) > 4.5


def test_an_explicit_colour_and_outline_are_used() -> None:
    rendered = render_text(
        flat((30, 30, 30)), "Gold", TextStyle(color=(255, 200, 0), stroke=0.08, shadow=True)
    )
    assert rendered.fill == (255, 200, 0)
    assert rendered.outline == BLACK  # the palette colour contrasting most with the fill
    pixels = {tuple(p) for p in np.asarray(rendered.image).reshape(-1, 3)}
    assert (255, 200, 0) in pixels and (0, 0, 0) in pixels


def test_the_mask_covers_every_changed_pixel_and_nothing_far_from_them() -> None:
    image = noisy()
    rendered = render_text(image, "Ünïcödé façade 42!", TextStyle(stroke=0.05, shadow=True))
    before = np.asarray(image).astype(np.int16)
    after = np.asarray(rendered.image).astype(np.int16)
    changed = np.abs(after - before).max(axis=2) > 0
    mask = np.asarray(rendered.mask) > 0
    assert changed.any()
    assert not (changed & ~mask).any()  # every drawn pixel is under the mask
    assert mask.sum() <= 1.05 * changed.sum()  # and the mask is the glyphs, not a box


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "blank"),
        ("two\nlines", "one line"),
        ("日本語", "cannot draw"),
        ("x" * 201, "at most 200"),
    ],
)
def test_text_the_font_cannot_draw_is_named(text: str, problem: str) -> None:
    found = text_problem(text)
    assert found is not None and problem in found


def test_latin_greek_and_cyrillic_are_drawable() -> None:
    assert text_problem("Ça va? Ελλάδα Москва ß ø å") is None


@pytest.mark.parametrize(
    "text",
    [
        "Chapter One",
        "GAME OVER",
        "0123456789",
        "3.14, 2.72; 1,000!",
        "Who? (What) - Why: 50% & more",
        "Café crème brûlée",
        "Über naïve façade",
        "El niño año",
    ],
)
def test_ocr_reads_a_rendered_line_back_exactly(reader: TextReader, text: str) -> None:
    from stageflow.inference.text_pass import line_box

    rendered = render_text(noisy(3), text)
    read = reader.read(rendered.image.crop(line_box(rendered, rendered.image.size)))
    assert normalize(read) == normalize(text)
    assert cer(text, read) == 0.0


def test_ocr_does_not_read_text_that_is_not_there(reader: TextReader) -> None:
    from stageflow.inference.text_pass import line_box

    rendered = render_text(noisy(3), "Chapter One")
    blank = flat((128, 128, 128)).crop(line_box(rendered, (512, 512)))
    assert cer("Chapter One", reader.read(blank)) > 0.5


def test_levenshtein_and_cer() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("same", "same") == 0
    assert cer("Chapter One", "Chapter One") == 0.0
    assert cer("Chapter One", "Chapter 0ne") == pytest.approx(1 / 11)
    assert cer("abcd", "") == 1.0
    # NFKC: the "fi" ligature and a full-width digit are the plain characters;
    # whitespace runs are one space.
    assert cer("fine 1", "\ufb01ne  \uff11") == 0.0
    assert normalize("  a \t b ") == "a b"
