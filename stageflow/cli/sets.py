"""One typing of `--set KEY=VALUE` values by their proto field, shared by
`stageflow loadtest` and `stageflow rerun`."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from stageflow.core.errors import InvalidArgument

INTS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}
FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}


def typed_value(fd: FieldDescriptor, key: str, raw: str, *, enum_numbers: bool) -> Any:
    """`raw` as `fd`'s type; an enum by its short ("lanczos") or full name, as
    its number or its full name. INVALID_ARGUMENT names `--set KEY`."""
    try:
        if fd.type in INTS:
            return int(raw)
        if fd.type in FLOATS:
            return float(raw)
    except ValueError:
        raise InvalidArgument(f"--set {key}", f"expected a number, got {raw!r}") from None
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidArgument(f"--set {key}", f"expected true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if fd.type == FieldDescriptor.TYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        values = {v.name: v.number for v in enum_type.values}
        # "lanczos" -> UPSCALE_MODE_LANCZOS: the prefix is the enum's name in caps.
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum_type.name)
        name = raw if raw in values else f"{prefix.lstrip('_')}_{raw.upper()}"
        if name not in values:
            raise InvalidArgument(f"--set {key}", f"expected one of {', '.join(values)}")
        return values[name] if enum_numbers else name
    if fd.type == FieldDescriptor.TYPE_STRING:
        return raw
    raise InvalidArgument(f"--set {key}", "not a scalar field")
