"""Translation between the stage protos and the transport-neutral model types.

Unset `optional` proto fields take the params dataclass defaults; a set value
is passed through as is and validated by the model (never silently corrected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message

from stageflow.core.artifacts import Artifact
from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import (
    Box,
    ModelDescription,
    ModelIdentity,
    RefineMode,
    RefineParams,
    StageParams,
    TextCheck,
    TextPlacement,
    Txt2ImgParams,
    UpscaleMode,
    UpscaleParams,
)
from stageflow.v1 import common_pb2, stage_pb2

_REFINE_MODES = {
    stage_pb2.REFINE_MODE_UNSPECIFIED: RefineMode.IMG2IMG,
    stage_pb2.REFINE_MODE_IMG2IMG: RefineMode.IMG2IMG,
    stage_pb2.REFINE_MODE_INPAINT: RefineMode.INPAINT,
}
_TEXT_PLACEMENTS = {
    stage_pb2.TEXT_PLACEMENT_UNSPECIFIED: TextPlacement.BOTTOM,
    stage_pb2.TEXT_PLACEMENT_BOTTOM: TextPlacement.BOTTOM,
    stage_pb2.TEXT_PLACEMENT_TOP: TextPlacement.TOP,
    stage_pb2.TEXT_PLACEMENT_CENTER: TextPlacement.CENTER,
}
_UPSCALE_MODES = {
    stage_pb2.UPSCALE_MODE_UNSPECIFIED: UpscaleMode.LEARNED,
    stage_pb2.UPSCALE_MODE_LEARNED: UpscaleMode.LEARNED,
    stage_pb2.UPSCALE_MODE_LANCZOS: UpscaleMode.LANCZOS,
}


def _present_fields(
    msg: Message,
    params_type: type,
    defaults: Mapping[str, Any],
    *,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The dataclass fields the message sets (explicit presence) or always
    carries; an unset field takes the model's default when it has one, else
    the dataclass default (by being left out)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(params_type):
        if f.name in skip:
            continue
        descriptor = msg.DESCRIPTOR.fields_by_name[f.name]
        if descriptor.has_presence and not msg.HasField(f.name):
            if f.name in defaults:
                values[f.name] = _as_type_of(f.default, defaults[f.name])
            continue
        values[f.name] = getattr(msg, f.name)
    return values


def _as_type_of(example: Any, value: Any) -> Any:
    """YAML may give 30.0 for an int field: keep the field's own type."""
    return type(example)(value)


def _enum(table: Mapping[Any, Any], value: int, field: str) -> Any:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def _txt2img(msg: stage_pb2.Txt2ImgParams, defaults: Mapping[str, Any]) -> Txt2ImgParams:
    return Txt2ImgParams(**_present_fields(msg, Txt2ImgParams, defaults))


def _box(msg: Message, field: str) -> Box | None:
    if not msg.HasField(field):
        return None
    b = getattr(msg, field)
    return Box(left=b.left, top=b.top, right=b.right, bottom=b.bottom)


def _refine(msg: stage_pb2.RefineParams, defaults: Mapping[str, Any]) -> RefineParams:
    values = _present_fields(
        msg, RefineParams, defaults, skip=("mode", "mask_box", "text_placement", "text_box")
    )
    return RefineParams(
        mode=_enum(_REFINE_MODES, msg.mode, "mode"),
        mask_box=_box(msg, "mask_box"),
        text_placement=_enum(_TEXT_PLACEMENTS, msg.text_placement, "text_placement"),
        text_box=_box(msg, "text_box"),
        **values,
    )


def _upscale(msg: stage_pb2.UpscaleParams, defaults: Mapping[str, Any]) -> UpscaleParams:
    values = _present_fields(msg, UpscaleParams, defaults, skip=("mode",))
    return UpscaleParams(mode=_enum(_UPSCALE_MODES, msg.mode, "mode"), **values)


_DECODERS: dict[str, Callable[[Any, Mapping[str, Any]], StageParams]] = {
    "txt2img": _txt2img,
    "refine": _refine,
    "upscale": _upscale,
}


def params_from_request(
    request: stage_pb2.RunRequest, defaults: Mapping[str, Any] | None = None
) -> StageParams:
    """The request's params; unset optional fields take `defaults` (the loaded
    model's, from its model.yaml) where given, else the dataclass defaults."""
    which = request.WhichOneof("params")
    if which is None:
        raise InvalidArgument("params", f"one of {', '.join(_DECODERS)} is required")
    return _DECODERS[which](getattr(request, which), defaults or {})


def model_info(identity: ModelIdentity) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        name=identity.name,
        version=identity.version,
        backend=identity.backend,
        fingerprint=identity.fingerprint,
    )


def text_check(check: TextCheck) -> stage_pb2.TextCheck:
    return stage_pb2.TextCheck(
        text=check.text,
        ocr_text=check.ocr_text,
        cer=check.cer,
        exact=check.exact,
        attempts=check.attempts,
        fell_back=check.fell_back,
        attempt_cers=check.attempt_cers,
    )


def artifact_ref(artifact: Artifact) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(
        key=artifact.key,
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        media_type=artifact.media_type,
    )


def describe_response(
    desc: ModelDescription, *, ready: bool, max_concurrency: int, max_queue: int
) -> stage_pb2.DescribeResponse:
    return stage_pb2.DescribeResponse(
        kind=str(desc.kind),
        model=model_info(desc.identity),
        min_side=desc.min_side,
        max_side=desc.max_side,
        size_multiple=desc.size_multiple,
        params=[
            stage_pb2.ParamRange(name=name, min=lo, max=hi)
            for name, (lo, hi) in desc.param_ranges.items()
        ],
        ready=ready,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
    )
