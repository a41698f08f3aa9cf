"""The New image form: its fields, and the form to a SubmitJobRequest.

Each input is named by its SubmitJobRequest field path ("bundle.base",
"width", "base.steps", "refine.mode"), so an error the orchestrator (or this
module) names a field with is shown beside the input of that name. The
per-stage options are read off the options messages (BaseOptions,
RefineOptions, UpscaleOptions): a field added to the proto appears in the
form with no change here. Values are converted by the field's proto type;
empty inputs are left unset (the pipeline's, then the model's defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow.client.options import _enum_prefix
from stageflow.gateway.errors import GatewayError
from stageflow.v1 import orchestrator_pb2 as pb

# The options messages of the stage kinds that have one: (request field, legend).
STAGE_OPTIONS = (("base", "Base"), ("refine", "Refine"), ("upscale", "Upscale"))
# What an uploaded image can be used for: SubmitJobRequest.stages.
UPLOAD_STAGES = {
    "refine": ("refine",),
    "upscale": ("upscale",),
    "refine,upscale": ("refine", "upscale"),
}
# The integer types' ranges: a value outside cannot be set on the message.
_INTEGERS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_FLOATS = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE}


@dataclass(frozen=True)
class Field:
    """One input of the form."""

    name: str  # the SubmitJobRequest field path: the input's name
    label: str
    kind: str  # "int", "float", "enum", "bool" or "text"
    choices: tuple[str, ...] = ()  # an enum's short names, in declaration order

    @property
    def id(self) -> str:
        return "f-" + self.name.replace(".", "-")


def _kind(fd: FieldDescriptor) -> str:
    if fd.cpp_type in _INTEGERS:
        return "int"
    if fd.cpp_type in _FLOATS:
        return "float"
    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return "enum"
    if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "bool"
    return "text"


def _choices(fd: FieldDescriptor) -> tuple[str, ...]:
    if fd.enum_type is None:
        return ()
    prefix = _enum_prefix(fd.enum_type.name)
    return tuple(v.name.removeprefix(prefix).lower() for v in fd.enum_type.values if v.number != 0)


def stage_fields(stage: str) -> tuple[Field, ...]:
    """The scalar fields of a stage's options message (nested messages such as
    a mask box are left to the JSON API)."""
    message: Any = pb.SubmitJobRequest.DESCRIPTOR.fields_by_name[stage].message_type
    return tuple(
        Field(f"{stage}.{fd.name}", fd.name.replace("_", " "), _kind(fd), _choices(fd))
        for fd in message.fields
        if fd.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE and not fd.is_repeated
    )


PROMPT_FIELDS = (
    Field("bundle.base", "Prompt", "text"),
    Field("bundle.style", "Style", "text"),
    Field("bundle.overlay_text", "Overlay text", "text"),
    Field("bundle.negative_prompt", "Negative prompt", "text"),
)
SIZE_FIELDS = (
    Field("seed", "Seed", "int"),
    Field("width", "Width", "int"),
    Field("height", "Height", "int"),
)
STAGE_FIELDS = {stage: stage_fields(stage) for stage, _ in STAGE_OPTIONS}
FIELDS = {
    f.name: f
    for f in (*PROMPT_FIELDS, *SIZE_FIELDS, *(f for fs in STAGE_FIELDS.values() for f in fs))
}


def _convert(field: Field, fd: Any, text: str) -> object:  # fd: a FieldDescriptor (py or upb)
    """`text` as the field's value; GatewayError naming the field otherwise."""
    if field.kind == "text":
        return text
    if field.kind == "bool":
        return text in ("on", "true", "1")
    if field.kind == "enum":
        full = _enum_prefix(fd.enum_type.name) + text.strip().upper()
        if full not in fd.enum_type.values_by_name:
            raise _bad(field, f"must be one of {', '.join(field.choices)}")
        return fd.enum_type.values_by_name[full].number
    try:
        number = int(text) if field.kind == "int" else float(text)
    except ValueError:
        raise _bad(field, f"must be {'a whole' if field.kind == 'int' else 'a'} number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise _bad(field, "must be a finite number")
    low, high = _INTEGERS.get(fd.cpp_type, (-math.inf, math.inf))
    if not low <= number <= high:
        raise _bad(field, f"must be in [{low}, {high}]")
    return number


def _bad(field: Field, problem: str) -> GatewayError:
    return GatewayError("INVALID_ARGUMENT", f"{field.name}: {problem}", field.name)


def submit_request(values: Mapping[str, str]) -> pb.SubmitJobRequest:
    """The SubmitJobRequest the form's `values` (input name -> text) ask for:
    the fields of FIELDS, `pipeline`, and `stages` (UPLOAD_STAGES' keys) for
    an uploaded image. The first bad value raises GatewayError naming it."""
    request = pb.SubmitJobRequest(pipeline=values.get("pipeline", "").strip())
    for name, field in FIELDS.items():
        text = values.get(name, "")
        if field.kind != "text":
            text = text.strip()
        if not text:
            continue
        *parents, leaf = name.split(".")
        message: Message = request
        for part in parents:
            message = getattr(message, part)
        setattr(message, leaf, _convert(field, message.DESCRIPTOR.fields_by_name[leaf], text))
    stages = values.get("stages", "")
    if stages:
        if stages not in UPLOAD_STAGES:
            raise GatewayError(
                "INVALID_ARGUMENT",
                f"stages: must be one of {', '.join(UPLOAD_STAGES)}",
                "stages",
            )
        request.stages.extend(UPLOAD_STAGES[stages])
    return request
