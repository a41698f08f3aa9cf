"""Translation between the stage protos and the transport-neutral model types.

Derived from the stage-kind registry (stageflow.kinds): each kind names its
params message (or none: GenericParams) and the model layer's params
dataclass, and the two are mapped field by field, by name. Unset `optional`
fields take the loaded model's defaults (its model.yaml) where it has them,
else the dataclass defaults; a set value is passed through as is and
validated by the model (never silently corrected). Enum values map by their
short name (REFINE_MODE_INPAINT -> RefineMode("inpaint")); UNSPECIFIED is the
dataclass default; message fields (boxes) map onto dataclasses by field name.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow import kinds
from stageflow.core.artifacts import Artifact
from stageflow.core.errors import InvalidArgument
from stageflow.core.limits import quote
from stageflow.inference import interface, prompt_domain, registry
from stageflow.inference.interface import (
    ModelDescription,
    ModelIdentity,
    StageParams,
    TextCheck,
)
from stageflow.v1 import common_pb2, stage_pb2

# -- the kinds, resolved --------------------------------------------------------


_RESOLVED: dict[str, tuple[kinds.Kind, type]] = {}


def _resolved(kind: kinds.Kind) -> type:
    """The kind's params dataclass, imported from its path and known to the
    model layer under the kind's model kind (so model.yaml defaults validate)."""
    cached = _RESOLVED.get(kind.name)
    if cached is not None and cached[0] is kind:
        return cached[1]
    module_name, _, class_name = kind.params_type.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"kind {kind.name}: params_type {kind.params_type} is not a dataclass")
    if kind.model_kind not in interface.known_kinds():
        interface.stage_params(kind.model_kind)(cls)
    elif interface.params_type_of(kind.model_kind) is not cls:
        raise TypeError(
            f"kind {kind.name}: model kind {kind.model_kind!r} has params type "
            f"{interface.params_type_of(kind.model_kind).__name__}, not {class_name}"
        )
    for family, target in kind.family_classes.items():
        registry.register_family(family, target)
    _RESOLVED[kind.name] = (kind, cls)
    return cls


def params_type(kind: kinds.Kind) -> type:
    return _resolved(kind)


def install() -> None:
    """Resolve every registered kind: the model layer then knows each kind's
    params type and families (call before reading a model repository)."""
    for kind in kinds.all_kinds():
        _resolved(kind)


def _field_kinds() -> dict[str, kinds.Kind]:
    """RunRequest `params` member -> the kind it carries (message kinds only)."""
    return {kinds.params_field(k): k for k in kinds.all_kinds() if not k.generic}


# -- values -------------------------------------------------------------------


def _plain(hint: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return hint


def _coerce(hint: Any, value: Any) -> Any:
    """YAML may give 30.0 for an int field: keep the field's own type."""
    target = _plain(hint)
    return target(value) if target in (int, float) else value


def _enum(hint: Any, fd: Any, number: int, field: str) -> Any:
    enum_type = fd.enum_type
    assert enum_type is not None
    value = enum_type.values_by_number.get(number)
    if value is None:
        raise InvalidArgument(field, f"unknown value {number}")
    short = value.name.removeprefix(kinds.enum_prefix(enum_type.name)).lower()
    try:
        return _plain(hint)(short)
    except ValueError:
        raise InvalidArgument(field, f"{value.name} is not supported by this stage") from None


def _nested(hint: Any, msg: Message) -> Any:
    """A message field onto the dataclass its params field names (a Box)."""
    target = _plain(hint)
    return target(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(target)})


def _from_message(msg: Message, cls: type, defaults: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    wire = msg.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        fd = wire.get(f.name)
        if fd is None or (fd.has_presence and not msg.HasField(f.name)):
            if f.name in defaults:
                values[f.name] = _coerce(hints[f.name], defaults[f.name])
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            values[f.name] = _nested(hints[f.name], getattr(msg, f.name))
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            number = getattr(msg, f.name)
            if number != 0:  # UNSPECIFIED: the dataclass default
                values[f.name] = _enum(hints[f.name], fd, number, f.name)
        else:
            values[f.name] = getattr(msg, f.name)
    return cls(**values)


def _typed(hint: Any, value: Any, field: str) -> Any:
    """A Struct value (JSON: numbers are floats) as the params field's type."""
    target = _plain(hint)
    if isinstance(target, type) and issubclass(target, enum.Enum):
        try:
            return target(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in target)
            raise InvalidArgument(field, f"must be one of {allowed}, got {quote(value)}") from None
    if target is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(field, f"must be true or false, got {quote(value)}")
        return value
    if target in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(field, f"must be a number, got {quote(value)}")
        if target is int and value != int(value):
            raise InvalidArgument(field, f"must be a whole number, got {value:g}")
        return target(value)
    if target is str and not isinstance(value, str):
        raise InvalidArgument(field, f"must be a string, got {quote(value)}")
    return value


def _from_struct(values: struct_pb2.Struct, cls: type, defaults: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = json_format.MessageToDict(values)
    for key in given:
        if key not in fields:
            raise InvalidArgument(key, f"unknown parameter; known: {', '.join(fields)}")
    out: dict[str, Any] = {}
    for name in fields:
        if name in given:
            out[name] = _typed(hints[name], given[name], name)
        elif name in defaults:
            out[name] = _coerce(hints[name], defaults[name])
    return cls(**out)


def params_from_request(
    request: stage_pb2.RunRequest, defaults: Mapping[str, Any] | None = None
) -> StageParams:
    """The request's params; unset optional fields take `defaults` (the loaded
    model's, from its model.yaml) where given, else the dataclass defaults."""
    which = request.WhichOneof("params")
    by_field = _field_kinds()
    if which is None:
        members = ", ".join([*by_field, kinds.GENERIC_FIELD])
        raise InvalidArgument("params", f"one of {members} is required")
    if which == kinds.GENERIC_FIELD:
        generic = request.generic
        try:
            kind = kinds.by_model_kind(generic.kind)
        except KeyError as err:
            raise InvalidArgument("generic.kind", str(err.args[0])) from None
        result: StageParams = _from_struct(generic.values, _resolved(kind), defaults or {})
        return result
    kind = by_field[which]
    decoded: StageParams = _from_message(getattr(request, which), _resolved(kind), defaults or {})
    return decoded


def param_defaults(desc: ModelDescription) -> dict[str, float]:
    """What each numeric parameter takes when unset on this model: model.yaml's
    default, else the params dataclass's (None defaults, decided per call, are
    left out)."""
    out: dict[str, float] = {}
    for f in dataclasses.fields(interface.params_type_of(desc.kind)):
        default = f.default
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        out[f.name] = float(default)
    out.update({k: float(v) for k, v in desc.param_defaults.items()})
    return out


def prompt_warnings(params: StageParams, desc: ModelDescription) -> list[str]:
    """The call's warnings: its prompt's words outside the model's declared
    vocabulary (none when it declares none, or the params carry no prompt)."""
    prompt = getattr(params, "prompt", None)
    if not isinstance(prompt, str) or not desc.vocabulary:
        return []
    line = prompt_domain.prompt_warning("prompt", prompt, desc.vocabulary, desc.domain_description)
    return [line] if line else []


def model_info(identity: ModelIdentity) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        name=identity.name,
        version=identity.version,
        backend=identity.backend,
        fingerprint=identity.fingerprint,
        dtype=identity.dtype,
        dtype_setting=identity.dtype_setting,
        dtype_reason=identity.dtype_reason,
        compile=identity.compile,
        channels_last=identity.channels_last,
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
        defaults=param_defaults(desc),
        vocabulary=desc.vocabulary,
        domain_description=desc.domain_description,
        latent_space=desc.latent_space,
        cpu_features=desc.identity.cpu_features,
        cpu_capability=desc.identity.cpu_capability,
    )
