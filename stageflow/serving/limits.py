"""Every request's size limits, checked before a handler runs.

`check_request` walks one request message in a single linear pass over the
fields it sets: each string and repeated field against its maximum (the
protos' "At most N" comments; `MAXIMA` here is the table they document, and a
unit test keeps the two equal), each enum against its declared values (proto3
keeps unknown numbers: 42 is not a RefineMode), each float against NaN and
infinity, each options Struct against its key count and value types. Unknown
fields are discarded first, so they are never stored or echoed. Errors name
the field path and quote none of the value.

The ErrorInterceptor calls it for every stageflow.v1 request of every service
(the stages), so no RPC does any work on a request it would reject; a service
that authenticates its callers (the orchestrator) calls it right after
authentication instead (`checks_itself`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow.core import limits as L
from stageflow.core.errors import InvalidArgument

PACKAGE = "stageflow.v1."

# Services whose servicers call `check_request` themselves, once the caller is
# authenticated (so an anonymous caller gets UNAUTHENTICATED and every call is
# audited); the ErrorInterceptor checks every other service's requests.
SELF_CHECKED: set[str] = set()


def checks_itself(service: str) -> None:
    """Declare that `service` (its full name) checks its requests itself."""
    SELF_CHECKED.add(service)


_BUNDLE = {
    "base": L.MAX_PROMPT_CHARS,
    "style": L.MAX_PROMPT_CHARS,
    "overlay_text": L.MAX_TEXT_CHARS,
    "negative_prompt": L.MAX_PROMPT_CHARS,
}
_OPTIONS = {"text_color": L.MAX_SHORT_CHARS}

# Message full name -> field -> its maximum: characters for a string, entries
# for a repeated field or a map. Every string and repeated field of every
# request message (and of the messages inside them) is listed.
MAXIMA: Mapping[str, Mapping[str, int]] = {
    # orchestrator.proto
    "stageflow.v1.PromptBundle": _BUNDLE,
    "stageflow.v1.BundleOverrides": _BUNDLE,
    "stageflow.v1.RefineOptions": _OPTIONS,
    "stageflow.v1.SubmitJobRequest": {
        "request_id": L.MAX_ID_CHARS,
        "stages": L.MAX_STAGES,
        "pipeline": L.MAX_NAME_CHARS,
        "options": L.MAX_OPTION_ENTRIES,
        "input_image": L.MAX_ID_CHARS,
    },
    "stageflow.v1.WatchJobRequest": {"job_id": L.MAX_ID_CHARS},
    "stageflow.v1.ListJobsRequest": {"page_token": L.MAX_ID_CHARS, "query": L.MAX_TEXT_CHARS},
    "stageflow.v1.GetJobRequest": {"job_id": L.MAX_ID_CHARS},
    "stageflow.v1.CancelJobRequest": {"job_id": L.MAX_ID_CHARS},
    "stageflow.v1.RerunJobRequest": {
        "job_id": L.MAX_ID_CHARS,
        "from_stage": L.MAX_NAME_CHARS,
        "options": L.MAX_OPTION_ENTRIES,
    },
    "stageflow.v1.GetArtifactRequest": {
        "job_id": L.MAX_ID_CHARS,
        "stage": L.MAX_NAME_CHARS,
        "key": L.MAX_KEY_CHARS,
    },
    "stageflow.v1.UploadImageRequest": {"data": L.MAX_UPLOAD_CHUNK_BYTES},
    "stageflow.v1.ShareArtifactRequest": {"job_id": L.MAX_ID_CHARS},
    "stageflow.v1.GetSharedArtifactRequest": {"token": L.MAX_TOKEN_CHARS},
    # stage.proto
    "stageflow.v1.Txt2ImgParams": {
        "prompt": L.MAX_PROMPT_CHARS,
        "negative_prompt": L.MAX_PROMPT_CHARS,
    },
    "stageflow.v1.RefineParams": {
        "prompt": L.MAX_PROMPT_CHARS,
        "negative_prompt": L.MAX_PROMPT_CHARS,
        "text": L.MAX_TEXT_CHARS,
        "text_color": L.MAX_SHORT_CHARS,
    },
    "stageflow.v1.GenericParams": {"kind": L.MAX_NAME_CHARS},
    "stageflow.v1.RunRequest": {
        "request_id": L.MAX_ID_CHARS,
        "job_id": L.MAX_ID_CHARS,
        "output_prefix": L.MAX_OUTPUT_PREFIX_CHARS,
    },
    "stageflow.v1.LoadModelRequest": {"model": L.MAX_ID_CHARS},
    # common.proto
    "stageflow.v1.ArtifactRef": {
        "key": L.MAX_KEY_CHARS,
        "sha256": L.MAX_SHORT_CHARS,
        "media_type": L.MAX_NAME_CHARS,
    },
}


def _is_map(fd: FieldDescriptor) -> bool:
    return (
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.message_type is not None
        and fd.message_type.GetOptions().map_entry
    )


def _maximum(descriptor: Any, fd: FieldDescriptor) -> int:
    # Unlisted fields (a message added without updating the table; the unit
    # test catches that) still get a bound.
    return MAXIMA.get(descriptor.full_name, {}).get(fd.name, L.MAX_PROMPT_CHARS)


def check_request(request: Message) -> None:
    """Discard `request`'s unknown fields, then raise InvalidArgument naming the
    first field over its maximum, an unknown enum value or a non-finite number."""
    if not request.DESCRIPTOR.full_name.startswith(PACKAGE):
        return
    request.DiscardUnknownFields()
    _check(request, "")


def _check(msg: Message, prefix: str) -> None:
    descriptor = msg.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Struct":
        assert isinstance(msg, struct_pb2.Struct)
        _check_struct(msg, prefix.rstrip("."))
        return
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        if _is_map(fd):
            limit = _maximum(descriptor, fd)
            problem = L.count_problem(len(value), limit)
            if problem:
                raise InvalidArgument(path, problem)
            value_fd = fd.message_type.fields_by_name["value"]  # type: ignore[union-attr]
            for key in value:
                if len(key) > L.MAX_NAME_CHARS:
                    raise InvalidArgument(
                        path, f"keys must be at most {L.MAX_NAME_CHARS} characters, got {len(key)}"
                    )
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    _check(value[key], f"{path}.{key}.")
            continue
        if fd.is_repeated:
            problem = L.count_problem(len(value), _maximum(descriptor, fd))
            if problem:
                raise InvalidArgument(path, problem)
            for item in value:
                _check_value(descriptor, fd, item, path)
            continue
        if fd.name in _BARE.get(descriptor.full_name, ()):
            _check(value, prefix)  # errors name the params field as the stage does: "steps"
            continue
        _check_value(descriptor, fd, value, path)


# Members whose fields errors name without the member ("steps", not
# "txt2img.steps"), as the stage's own checks name them.
_BARE = {"stageflow.v1.RunRequest": {"txt2img", "refine", "upscale", "generic"}}


def _check_value(descriptor: Any, fd: FieldDescriptor, value: object, path: str) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        problem = L.length_problem(value, _maximum(descriptor, fd))
        if problem:
            raise InvalidArgument(path, problem)
    elif fd.type == FieldDescriptor.TYPE_BYTES:
        assert isinstance(value, bytes)
        if len(value) > _maximum(descriptor, fd):
            raise InvalidArgument(path, f"must be at most {_maximum(descriptor, fd)} bytes")
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None and isinstance(value, int)
        if value not in enum_type.values_by_number:
            known = ", ".join(v.name for v in enum_type.values if v.number != 0)
            raise InvalidArgument(path, f"unknown {enum_type.name} value {value}; known: {known}")
    elif fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        assert isinstance(value, float)
        problem = L.finite_problem(value)
        if problem:
            raise InvalidArgument(path, problem)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        _check(value, f"{path}.")


def _check_struct(struct: struct_pb2.Struct, path: str) -> None:
    """An options Struct: at most MAX_OPTION_KEYS names, each a number, a
    string or a boolean (kinds' options are scalars)."""
    problem = L.count_problem(len(struct.fields), L.MAX_OPTION_KEYS, "keys")
    if problem:
        raise InvalidArgument(path, problem)
    for key, value in struct.fields.items():
        if len(key) > L.MAX_NAME_CHARS:
            raise InvalidArgument(
                path, f"keys must be at most {L.MAX_NAME_CHARS} characters, got {len(key)}"
            )
        which = value.WhichOneof("kind")
        where = f"{path}.{key}"
        if which == "number_value":
            if not math.isfinite(value.number_value):
                raise InvalidArgument(where, f"must be a finite number, got {value.number_value}")
        elif which == "string_value":
            problem = L.length_problem(value.string_value, L.MAX_OPTION_VALUE_CHARS)
            if problem:
                raise InvalidArgument(where, problem)
        elif which != "bool_value":
            raise InvalidArgument(where, "must be a number, a string or a boolean")


__all__ = ["MAXIMA", "PACKAGE", "SELF_CHECKED", "check_request", "checks_itself"]
