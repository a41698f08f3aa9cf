"""Option dicts to protobuf messages: proto field names, short enum names.

`{"mode": "lanczos"}` and `{"mode": "UPSCALE_MODE_LANCZOS"}` both give
`UpscaleOptions(mode=UPSCALE_MODE_LANCZOS)`; nested messages are dicts too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from stageflow.client.errors import InvalidArgument
from stageflow.v1 import orchestrator_pb2 as pb

M = TypeVar("M", bound=Message)


def _enum_prefix(enum_name: str) -> str:
    """RefineMode -> REFINE_MODE_ (the buf-style prefix of its values)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _expand_enums(descriptor: Descriptor, values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn short enum names ("lanczos") into full ones, recursing into messages."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is not None and fd.enum_type is not None and isinstance(value, str):
            full = value.upper()
            prefix = _enum_prefix(fd.enum_type.name)
            value = full if full in fd.enum_type.values_by_name else prefix + full
        elif fd is not None and fd.message_type is not None and isinstance(value, Mapping):
            value = _expand_enums(fd.message_type, value)
        out[key] = value
    return out


def options(cls: type[M], values: Mapping[str, Any] | None) -> M:
    """Build an options message from a dict; unknown fields or values raise
    InvalidArgument naming the message."""
    msg = cls()
    if not values:
        return msg
    try:
        return json_format.ParseDict(_expand_enums(cast(Descriptor, msg.DESCRIPTOR), values), msg)
    except json_format.ParseError as err:
        raise InvalidArgument.of_field(cls.DESCRIPTOR.name, str(err)) from None


def job_state(value: int | str | None) -> int:
    """JobState from "succeeded", "JOB_STATE_SUCCEEDED" or its number; None -> unspecified."""
    if value is None:
        return pb.JOB_STATE_UNSPECIFIED
    if isinstance(value, int):
        return value
    name = value.upper()
    name = name if name.startswith("JOB_STATE_") else "JOB_STATE_" + name
    try:
        return pb.JobState.Value(name)
    except ValueError:
        raise InvalidArgument.of_field("state", f"unknown job state {value!r}") from None
