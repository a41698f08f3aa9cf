"""Translation between the stage protos and the transport-neutral model types.

Unset `optional` proto fields take the params dataclass defaults; a set value
is passed through as is and validated by the model (never silently corrected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message

from inference.interface import (
    Box,
    ModelDescription,
    ModelIdentity,
    RefineMode,
    RefineParams,
    StageParams,
    Txt2ImgParams,
    UpscaleMode,
    UpscaleParams,
)
from serving.artifacts import Artifact
from serving.errors import InvalidArgument
from stageflow.v1 import common_pb2, stage_pb2

_REFINE_MODES = {
    stage_pb2.REFINE_MODE_UNSPECIFIED: RefineMode.IMG2IMG,
    stage_pb2.REFINE_MODE_IMG2IMG: RefineMode.IMG2IMG,
    stage_pb2.REFINE_MODE_INPAINT: RefineMode.INPAINT,
}
_UPSCALE_MODES = {
    stage_pb2.UPSCALE_MODE_UNSPECIFIED: UpscaleMode.LEARNED,
    stage_pb2.UPSCALE_MODE_LEARNED: UpscaleMode.LEARNED,
    stage_pb2.UPSCALE_MODE_LANCZOS: UpscaleMode.LANCZOS,
}


def _present_fields(
    msg: Message, params_type: type, *, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The dataclass fields the message sets (explicit presence) or always carries."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(params_type):
        if f.name in skip:
            continue
        descriptor = msg.DESCRIPTOR.fields_by_name[f.name]
        if descriptor.has_presence and not msg.HasField(f.name):
            continue
        values[f.name] = getattr(msg, f.name)
    return values


def _enum(table: Mapping[Any, Any], value: int, field: str) -> Any:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def _txt2img(msg: stage_pb2.Txt2ImgParams) -> Txt2ImgParams:
    return Txt2ImgParams(**_present_fields(msg, Txt2ImgParams))


def _refine(msg: stage_pb2.RefineParams) -> RefineParams:
    values = _present_fields(msg, RefineParams, skip=("mode", "mask_box"))
    box = None
    if msg.HasField("mask_box"):
        b = msg.mask_box
        box = Box(left=b.left, top=b.top, right=b.right, bottom=b.bottom)
    return RefineParams(mode=_enum(_REFINE_MODES, msg.mode, "mode"), mask_box=box, **values)


def _upscale(msg: stage_pb2.UpscaleParams) -> UpscaleParams:
    values = _present_fields(msg, UpscaleParams, skip=("mode",))
    return UpscaleParams(mode=_enum(_UPSCALE_MODES, msg.mode, "mode"), **values)


_DECODERS: dict[str, Callable[[Any], StageParams]] = {
    "txt2img": _txt2img,
    "refine": _refine,
    "upscale": _upscale,
}


def params_from_request(request: stage_pb2.RunRequest) -> StageParams:
    which = request.WhichOneof("params")
    if which is None:
        raise InvalidArgument("params", f"one of {', '.join(_DECODERS)} is required")
    return _DECODERS[which](getattr(request, which))


def model_info(identity: ModelIdentity) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        name=identity.name,
        version=identity.version,
        backend=identity.backend,
        fingerprint=identity.fingerprint,
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
