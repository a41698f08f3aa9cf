"""The New image form to a SubmitJobRequest: field paths, types, the errors' fields."""

from __future__ import annotations

import pytest

from stageflow.gateway.errors import GatewayError
from stageflow.gateway.workspace import form
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2


def test_every_scalar_option_of_the_options_messages_is_an_input() -> None:
    for stage, _ in form.STAGE_OPTIONS:
        message = pb.SubmitJobRequest.DESCRIPTOR.fields_by_name[stage].message_type
        assert message is not None
        scalars = {
            f"{stage}.{fd.name}"
            for fd in message.fields
            if fd.message_type is None and not fd.is_repeated
        }
        assert {f.name for f in form.STAGE_FIELDS[stage]} == scalars
    assert form.FIELDS["refine.mode"].choices == ("img2img", "inpaint")
    assert form.FIELDS["upscale.mode"].kind == "enum"
    assert form.FIELDS["refine.text_shadow"].kind == "bool"


def test_the_form_becomes_the_request_its_names_say() -> None:
    request = form.submit_request(
        {
            "bundle.base": "a red circle",
            "bundle.overlay_text": " Sale ",  # text is kept as typed
            "seed": " 7 ",
            "width": "32",
            "height": "",  # empty: unset, the model's default
            "base.steps": "12",
            "refine.strength": "0.4",
            "refine.mode": "inpaint",
            "refine.text_shadow": "on",
            "upscale.mode": "LANCZOS",
            "pipeline": "default",
            "stages": "refine,upscale",
            "not_a_field": "ignored",
        }
    )
    assert request.bundle.base == "a red circle" and request.bundle.overlay_text == " Sale "
    assert (request.seed, request.width) == (7, 32) and not request.HasField("height")
    assert request.base.steps == 12 and request.refine.strength == pytest.approx(0.4)
    assert request.refine.mode == stage_pb2.REFINE_MODE_INPAINT and request.refine.text_shadow
    assert request.upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
    assert not request.HasField("deadline_seconds") and not request.refine.HasField("steps")
    assert list(request.stages) == ["refine", "upscale"] and request.pipeline == "default"


@pytest.mark.parametrize(
    ("values", "field", "text"),
    [
        ({"width": "wide"}, "width", "whole number"),
        ({"width": "1.5"}, "width", "whole number"),
        ({"width": str(2**31)}, "width", "2147483647"),
        ({"seed": str(2**63)}, "seed", "9223372036854775807"),
        ({"refine.strength": "nan"}, "refine.strength", "finite"),
        ({"refine.strength": "x"}, "refine.strength", "number"),
        ({"upscale.mode": "bicubic"}, "upscale.mode", "learned, lanczos"),
        ({"stages": "base"}, "stages", "refine, upscale"),
    ],
)
def test_a_bad_value_names_its_input(values: dict[str, str], field: str, text: str) -> None:
    with pytest.raises(GatewayError) as err:
        form.submit_request(values)
    assert err.value.field == field and text in err.value.message
