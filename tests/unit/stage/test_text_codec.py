"""The typography fields and the OCR check cross the stage API intact."""

from __future__ import annotations

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import Box, RefineParams, TextCheck, TextPlacement
from stageflow.stage import codec as stage_codec
from stageflow.v1 import stage_pb2


def test_refine_text_fields_decode_with_defaults_for_unset_ones() -> None:
    request = stage_pb2.RunRequest(refine=stage_pb2.RefineParams(prompt="p", text="Chapter One"))
    params = stage_codec.params_from_request(request)
    assert params == RefineParams(prompt="p", text="Chapter One")
    assert isinstance(params, RefineParams)
    assert (params.max_cer, params.max_attempts, params.text_stroke) == (0.0, 3, 0.0)
    assert params.text_placement == TextPlacement.BOTTOM and params.text_box is None


def test_refine_text_fields_decode_when_set() -> None:
    msg = stage_pb2.RefineParams(
        prompt="p",
        text="Sale",
        text_placement=stage_pb2.TEXT_PLACEMENT_TOP,
        text_box=stage_pb2.Box(left=0.5, top=0.0, right=1.0, bottom=0.25),
        text_color="#ff0000",
        text_stroke=0.05,
        text_shadow=True,
        max_cer=0.0,
        max_attempts=5,
    )
    params = stage_codec.params_from_request(stage_pb2.RunRequest(refine=msg))
    assert isinstance(params, RefineParams)
    assert params.text_placement == TextPlacement.TOP
    assert params.text_box == Box(0.5, 0.0, 1.0, 0.25)
    assert (params.text_color, params.text_shadow, params.max_attempts) == ("#ff0000", True, 5)
    assert params.max_cer == 0.0  # explicitly set zero is kept, not the default
    assert params.text_stroke == pytest.approx(0.05)


def test_unknown_placement_is_invalid() -> None:
    msg = stage_pb2.RefineParams(prompt="p", text="x", text_placement=99)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        stage_codec.params_from_request(stage_pb2.RunRequest(refine=msg))
    assert err.value.field == "text_placement"


def test_text_check_encodes_every_field() -> None:
    check = TextCheck(
        text="Chapter One",
        ocr_text="Chapter 0ne",
        cer=1 / 11,
        exact=False,
        attempts=3,
        fell_back=True,
        attempt_cers=(0.5, 0.25, 1 / 11),
    )
    msg = stage_codec.text_check(check)
    assert (msg.text, msg.ocr_text, msg.exact, msg.attempts, msg.fell_back) == (
        "Chapter One",
        "Chapter 0ne",
        False,
        3,
        True,
    )
    assert msg.cer == pytest.approx(1 / 11)
    assert list(msg.attempt_cers) == pytest.approx([0.5, 0.25, 1 / 11])
