"""The typography pass: retries with the next seed, falls back, reports; on the refine model."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import Box, RefineMode, RefineParams, StageInputs
from stageflow.inference.ocr import TextReader
from stageflow.inference.typography import TextStyle, render_text

if TYPE_CHECKING:
    from stageflow.inference.diffusion import RefineModel


def background(size: int = 128, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(60, 200, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class ScriptedReader:
    """Reads what it is told to, in order; records the crops it was given."""

    def __init__(self, *reads: str) -> None:
        self.reads = list(reads)
        self.crops: list[Image.Image] = []

    def read(self, image: Image.Image) -> str:
        self.crops.append(image)
        return self.reads.pop(0)


class Smudge:
    """A stand-in harmoniser: greys out the masked area, remembers each seed."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def __call__(self, image: Image.Image, mask: Image.Image, seed: int, progress) -> Image.Image:  # type: ignore[no-untyped-def]
        self.seeds.append(seed)
        for step in range(1, 5):
            progress(step, 4)
        return Image.composite(Image.new("RGB", image.size, (128, 128, 128)), image, mask)


PARAMS = RefineParams(prompt="hero", text="Chapter One", seed=41, max_attempts=3, max_cer=0.05)


def test_first_good_read_is_accepted() -> None:
    from stageflow.inference.text_pass import run_text_pass

    smudge, steps = Smudge(), []
    out = run_text_pass(
        background(),
        PARAMS,
        smudge,
        ScriptedReader("Chapter 0ne", "Chapter One"),
        lambda i, n: steps.append((i, n)),
    )
    check = out.text_check
    assert check is not None
    assert (check.exact, check.fell_back, check.attempts, check.cer) == (True, False, 2, 0.0)
    assert check.attempt_cers == pytest.approx((1 / 11, 0.0))
    assert smudge.seeds == [41, 42]  # the next seed on retry
    # The harmonised image is returned, not the exact render.
    exact = render_text(background(), "Chapter One").image
    assert out.image.tobytes() != exact.tobytes()
    # Steps keep counting across attempts; the total grows when a retry starts.
    assert steps[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[4:] == [(5, 8), (6, 8), (7, 8), (8, 8)]


def test_failing_reads_retry_then_fall_back_to_the_exact_render() -> None:
    from stageflow.inference.text_pass import run_text_pass

    smudge = Smudge()
    reader = ScriptedReader("Chaptr", "Cha", "", "Chapter One")
    out = run_text_pass(background(), PARAMS, smudge, reader, lambda i, n: None)
    check = out.text_check
    assert check is not None
    assert check.fell_back and check.attempts == 3
    assert smudge.seeds == [41, 42, 43]
    assert check.attempt_cers[2] == 1.0
    # The output is the exact render, and the reported read is of that output.
    exact = render_text(background(), "Chapter One")
    assert out.image.tobytes() == exact.image.tobytes()
    assert (check.ocr_text, check.exact, check.cer) == ("Chapter One", True, 0.0)
    assert len(reader.crops) == 4 and reader.crops[-1].size == reader.crops[0].size


def test_a_threshold_of_one_accepts_any_read() -> None:
    from stageflow.inference.text_pass import run_text_pass

    params = dataclasses.replace(PARAMS, max_cer=1.0)
    out = run_text_pass(background(), params, Smudge(), ScriptedReader("xx"), lambda i, n: None)
    assert out.text_check is not None and not out.text_check.fell_back
    assert out.text_check.attempts == 1


def test_aligned_box_grows_to_the_size_multiple_inside_the_image() -> None:
    from stageflow.inference.text_pass import aligned_box

    assert aligned_box((10, 100, 50, 120), (128, 128), 64) == (0, 64, 64, 128)
    assert aligned_box((0, 0, 300, 10), (256, 256), 64) == (0, 0, 256, 64)
    left, top, right, bottom = aligned_box((200, 300, 330, 370), (512, 512), 64)
    assert (right - left) % 64 == 0 and (bottom - top) % 64 == 0
    assert left <= 200 and right >= 330 and top <= 300 and bottom >= 370


# --- the refine model ---------------------------------------------------------


def failing_ocr(monkeypatch: pytest.MonkeyPatch) -> list[Image.Image]:
    crops: list[Image.Image] = []

    def read(self: TextReader, image: Image.Image) -> str:
        crops.append(image)
        return "" if len(crops) <= 2 else "Chapter One"

    monkeypatch.setattr(TextReader, "read", read)
    return crops


def test_refine_with_text_falls_back_when_ocr_keeps_failing(
    refine: RefineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    crops = failing_ocr(monkeypatch)
    image = background()
    params = RefineParams(prompt="hero", text="Chapter One", steps=8, strength=0.25, max_attempts=2)
    steps: list[tuple[int, int]] = []
    out = refine.run_with_report(
        params, StageInputs(image=image), lambda i, n: steps.append((i, n)), lambda: False
    )
    assert out.text_check is not None and out.text_check.fell_back
    assert out.text_check.attempts == 2 and len(crops) == 3
    assert out.image.tobytes() == render_text(image, "Chapter One").image.tobytes()
    assert steps[-1] == (4, 4)  # two passes of int(8 * 0.25) = 2 steps


def test_refine_with_text_harmonises_only_around_the_text(refine: RefineModel) -> None:
    image = background()
    params = RefineParams(prompt="hero", text="Chapter One", steps=8, strength=0.25)
    out = refine.run_with_report(params, StageInputs(image=image), lambda i, n: None, lambda: False)
    check = out.text_check
    assert check is not None and check.attempts >= 1
    before, after = np.asarray(image), np.asarray(out.image)
    # Above the text band nothing changed: the pass repaints the text region only.
    assert np.array_equal(before[:90], after[:90])
    assert not np.array_equal(before[100:], after[100:])
    # The same request gives the same bytes (seeded, one thread).
    again = refine.run_with_report(
        params, StageInputs(image=image), lambda i, n: None, lambda: False
    )
    assert again.image.tobytes() == out.image.tobytes() and again.text_check == check


def test_refine_without_text_reports_nothing(refine: RefineModel) -> None:
    params = RefineParams(prompt="hero", steps=4)
    out = refine.run_with_report(
        params, StageInputs(image=background(64)), lambda i, n: None, lambda: False
    )
    assert out.text_check is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"text": "日本"}, "text"),
        ({"text": "a\nb"}, "text"),
        ({"text_color": "not-a-colour"}, "text_color"),
        ({"mask_box": Box(0, 0.5, 1, 1), "mode": RefineMode.INPAINT}, "mask_box"),
        ({"text_box": Box(0.5, 0.5, 0.4, 1)}, "text_box"),
        ({"text_stroke": 0.5}, "text_stroke"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_text_params_are_rejected_naming_the_field(
    refine: RefineModel, change: dict[str, object], field: str
) -> None:
    params = dataclasses.replace(RefineParams(prompt="hero", text="Chapter One"), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        refine.validate(params)
    assert err.value.field == field


def test_text_with_a_mask_image_is_rejected(refine: RefineModel) -> None:
    image = background(64)
    inputs = StageInputs(image=image, mask=Image.new("L", image.size, 255))
    with pytest.raises(InvalidArgument) as err:
        refine.validate_inputs(RefineParams(prompt="hero", text="Hi"), inputs)
    assert err.value.field == "mask"


def test_style_fields_reach_the_renderer(refine: RefineModel) -> None:
    image = background()
    params = RefineParams(
        prompt="hero",
        text="Top",
        text_box=Box(0.0, 0.0, 1.0, 0.3),
        text_color="#ff0000",
        max_cer=1.0,
        steps=4,
        strength=0.25,
    )
    out = refine.run_with_report(params, StageInputs(image=image), lambda i, n: None, lambda: False)
    expected = render_text(image, "Top", TextStyle(box=params.text_box, color=(255, 0, 0)))
    mask = np.asarray(expected.mask) > 0
    # Nothing changed below the box's text: the text went to the top.
    assert np.array_equal(np.asarray(out.image)[64:], np.asarray(image)[64:])
    assert mask[:40].any() and not mask[64:].any()
