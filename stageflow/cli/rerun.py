"""`stageflow rerun --set KEY=VALUE`: from flat keys to RerunJob overrides.

A key is a field of the from-stage's options (refine: strength, steps,
guidance_scale, ...) or of the prompt bundle (text, style, negative). Values
are parsed by the field's type, so "steps=x" fails here, not on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow import kinds
from stageflow.cli.sets import FLOATS, INTS, typed_value
from stageflow.core.errors import InvalidArgument


def option_messages() -> dict[str, type[Message]]:
    """Stage -> its options message (the kinds that have one), from the registry."""
    return {k.name: k.options for k in kinds.all_kinds() if isinstance(k.options, type)}


# CLI key -> PromptBundle field.
BUNDLE_KEYS = {"text": "overlay_text", "style": "style", "negative": "negative_prompt"}

_SCALARS = (
    INTS
    | FLOATS
    | {
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_ENUM,
    }
)


@dataclass
class Overrides:
    """Keyword arguments of StageflowClient.rerun."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle: dict[str, str] = field(default_factory=dict)

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {f"{s}_options": v for s, v in self.options.items()}
        return {**kwargs, "bundle": self.bundle or None}


def allowed_keys(from_stage: str) -> list[str]:
    options = option_messages()
    fields = options[from_stage].DESCRIPTOR.fields if from_stage in options else []
    return sorted(f.name for f in fields if f.type in _SCALARS) + sorted(BUNDLE_KEYS)


def parse_sets(from_stage: str, sets: Sequence[str]) -> Overrides:
    """Map each "key=value" onto the from-stage's options or the bundle; an
    unknown --from stage is reported first, before any key."""
    if from_stage not in kinds.names():
        raise InvalidArgument(
            "--from", f"unknown stage {from_stage!r}; known stages: {', '.join(kinds.names())}"
        )
    out = Overrides()
    allowed = allowed_keys(from_stage)
    # cast: the stubs type descriptors as the python or the upb implementation.
    options = option_messages()
    fields = cast(
        Mapping[str, FieldDescriptor],
        options[from_stage].DESCRIPTOR.fields_by_name if from_stage in options else {},
    )
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument("--set", f"expected KEY=VALUE, got {item!r}")
        if key in BUNDLE_KEYS:
            out.bundle[BUNDLE_KEYS[key]] = raw
            continue
        fd = fields.get(key)
        if fd is None or fd.type not in _SCALARS:
            raise InvalidArgument(
                f"--set {key}",
                f"unknown key for a rerun from {from_stage}; allowed: {', '.join(allowed)}",
            )
        out.options.setdefault(from_stage, {})[key] = typed_value(fd, key, raw, enum_numbers=False)
    return out
