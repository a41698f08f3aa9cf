"""Protobuf <-> JSON with the proto's own field names: the API's JSON is the
gRPC API's messages (proto3 JSON mapping), not a second schema."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from stageflow.gateway.errors import GatewayError

M = TypeVar("M", bound=Message)


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def from_json(body: Any, message: M) -> M:
    """`body` parsed into `message`; INVALID_ARGUMENT naming the field otherwise."""
    if not isinstance(body, dict):
        raise GatewayError("INVALID_ARGUMENT", "body: must be a JSON object", "body")
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as err:
        text = str(err)
        # "Failed to parse seed field: ..." / "Message type ... has no field named x"
        field = None
        if text.startswith("Failed to parse ") and " field" in text:
            field = text.removeprefix("Failed to parse ").split(" field", 1)[0]
        elif "has no field named " in text:
            field = text.split("has no field named ", 1)[1].split(" ", 1)[0].strip('"')
        raise GatewayError("INVALID_ARGUMENT", f"{field or 'body'}: {text}", field) from None
