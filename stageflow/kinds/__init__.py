"""The stage-kind registry: each stage kind declared once, everything else derived.

A `Kind` says what a stage kind is on the wire and in the pipeline: its name,
the params message the stage receives and the options message a job sets,
how a job becomes a stage request (its builder), which inputs it reads, how
much it enlarges the image, and the model it serves by default. The stage
codec, the model repository's kind maps, the pipeline-spec models, the
request builders, the cluster launcher, the load tester and the deploy checks
all read it from here.

This module sits just above `stageflow.core`: it may import `stageflow.v1`,
never `stageflow.inference`; the model layer's parameter type is named by its
import path and resolved by the stage codec, which maps the kind's messages to
it. The three built-in kinds are in `stageflow.kinds.builtin`; another kind is
one `Kind` registered with `register()`, or published by a distribution under
the `stageflow.kinds` entry-point group (docs/extending.md).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stageflow.v1 import orchestrator_pb2, stage_pb2

ENTRY_POINT_GROUP = "stageflow.kinds"
# The RunRequest oneof member of kinds without a params message of their own.
GENERIC_FIELD = "generic"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

# (the job's effective request, this kind's effective options) -> the stage's
# params: an instance of `params_message`, or a Struct for a generic kind.
Builder = Callable[[orchestrator_pb2.SubmitJobRequest, Any], Message]
# (the params a builder made, the stage's defaults from its Describe, empty
# when it cannot be asked) -> raise stageflow.core.errors.InvalidArgument
# naming the params field: the rules the kind's stage applies to the same
# params (stageflow.core.limits), run by the orchestrator at submit.
Checker = Callable[[Message, Mapping[str, float]], None]


@dataclass(frozen=True)
class Limit:
    """Bounds a pipeline spec's default for an option must respect (checked
    when the orchestrator loads its specs; the stage checks its own ranges)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        """Why `value` breaks these bounds, or None (the orchestrator checks a
        job's options against them at submit, the stage reachable or not)."""
        if self.ge is not None and not value >= self.ge:
            return f"must be >= {self.ge:g}, got {value:g}"
        if self.gt is not None and not value > self.gt:
            return f"must be > {self.gt:g}, got {value:g}"
        if self.le is not None and not value <= self.le:
            return f"must be <= {self.le:g}, got {value:g}"
        return None


@dataclass(frozen=True)
class Kind:
    """One stage kind."""

    # The stage's name: pipeline specs' `stage`, the orchestrator's `stages`
    # setting, `python -m stageflow.stage NAME`, the k8s `stage-NAME` component.
    name: str
    # The model layer's params dataclass as "module:Class", resolved by the
    # stage codec only (this layer never imports the model layer).
    params_type: str
    # What the stage gets from a job: (effective request, effective options)
    # -> its params. None: every option the job or its spec set, copied by name
    # (`copy_options`).
    build: Builder | None = None
    # The RunRequest `params` oneof member's message; None: GenericParams.
    params_message: type[Message] | None = None
    # The job's options: a message that is a SubmitJobRequest field named
    # `name`, or for a kind without one, field name -> Python type (int,
    # float, str, bool) of the values it takes in SubmitJobRequest.options.
    options: type[Message] | Mapping[str, type] = field(default_factory=dict)
    # Bounds of spec defaults, by option name.
    limits: Mapping[str, Limit] = field(default_factory=dict)
    # Input artifacts its stage reads: () for a first stage, ("image",) for a
    # stage that takes the previous stage's output.
    inputs: tuple[str, ...] = ("image",)
    # How many times it enlarges its input's sides.
    output_scale: int = 1
    # The kind its models declare (model.yaml `kinds`, Describe's `kind`).
    model_kind: str = ""
    # The registry family served when no repository model is named, and its
    # folder: under `models/` (`stageflow models build-fixtures`) and under
    # fixtures/trained (the committed trained fixtures; None: the same folder).
    model_family: str = ""
    model_folder: str = ""
    trained_folder: str | None = None
    # model.yaml `format` -> the family that serves this kind from it.
    families: Mapping[str, str] = field(default_factory=dict)
    # Families the model layer does not list itself: family -> "module:Class".
    family_classes: Mapping[str, str] = field(default_factory=dict)
    # Params the job sets at the top of SubmitJobRequest (width, seed, ...):
    # param name -> that field, for errors that name what the caller wrote.
    top_level: Mapping[str, str] = field(default_factory=dict)
    # One line for --help texts and the docs.
    summary: str = ""
    # The submit-time check of the params `build` makes; None: only the
    # numeric ranges of the stage's Describe are checked.
    check: Checker | None = None
    # Latent hand-off (a pipeline spec's `handoff: latent`): the option with
    # which this kind's stage stops early and outputs latents instead of an
    # image (base: "denoising_end", below 1), and the one with which it
    # resumes from latents given instead of an image (refine:
    # "denoising_start", above 0). "": it does not.
    hands_off: str = ""
    takes_over: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"kind name {self.name!r}: lowercase letters, digits and '-', "
                "starting with a letter, at most 40 characters"
            )
        if not self.model_kind:
            object.__setattr__(self, "model_kind", self.name)
        if self.output_scale < 1:
            raise ValueError(f"kind {self.name}: output_scale must be >= 1")
        if self.params_message is not None:
            params_field(self)  # raises when RunRequest has no such member
        if isinstance(self.options, type):
            options_field = orchestrator_pb2.SubmitJobRequest.DESCRIPTOR.fields_by_name.get(
                self.name
            )
            if options_field is None or options_field.message_type is not (self.options.DESCRIPTOR):
                raise ValueError(
                    f"kind {self.name}: SubmitJobRequest has no {self.name} field of type "
                    f"{self.options.DESCRIPTOR.name}"
                )

    @property
    def generic(self) -> bool:
        """True when the kind has no params message of its own (GenericParams)."""
        return self.params_message is None

    @property
    def has_options_message(self) -> bool:
        return isinstance(self.options, type)

    @property
    def first(self) -> bool:
        """The kind reads no input: it can only start a pipeline."""
        return "image" not in self.inputs


def params_field(kind: Kind) -> str:
    """The RunRequest `params` member that carries `kind`'s params."""
    if kind.params_message is None:
        return GENERIC_FIELD
    oneof = stage_pb2.RunRequest.DESCRIPTOR.oneofs_by_name["params"]
    for fd in oneof.fields:
        if fd.message_type is kind.params_message.DESCRIPTOR:
            return str(fd.name)
    raise ValueError(
        f"kind {kind.name}: RunRequest.params has no {kind.params_message.DESCRIPTOR.name} member"
    )


# -- options --------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One scalar option of a kind, as specs and `--set` see it."""

    name: str
    type: type  # int, float, str or bool; str for enums
    choices: tuple[str, ...] = ()  # an enum's short names ("inpaint")
    limit: Limit = Limit()


def enum_prefix(enum_name: str) -> str:
    """RefineMode -> "REFINE_MODE_": the prefix of its value names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def enum_short_names(fd: Any) -> dict[str, int]:
    """An enum field's values by short name, UNSPECIFIED left out."""
    enum_type = fd.enum_type
    assert enum_type is not None
    prefix = enum_prefix(enum_type.name)
    return {
        v.name.removeprefix(prefix).lower(): v.number
        for v in enum_type.values
        if not v.name.endswith("_UNSPECIFIED")
    }


_SCALARS: dict[int, type] = {
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_ENUM: str,
}


def options(kind: Kind) -> dict[str, Option]:
    """The kind's scalar options by name (message-typed fields such as boxes
    are left out: specs and `--set` take scalars)."""
    out: dict[str, Option] = {}
    if isinstance(kind.options, type):
        for fd in kind.options.DESCRIPTOR.fields:
            if fd.type not in _SCALARS:
                continue
            choices = tuple(enum_short_names(fd)) if fd.type == FieldDescriptor.TYPE_ENUM else ()
            out[fd.name] = Option(
                fd.name, _SCALARS[fd.type], choices, kind.limits.get(fd.name, Limit())
            )
    else:
        for name, py_type in kind.options.items():
            if py_type not in (int, float, str, bool):
                raise ValueError(f"kind {kind.name}: option {name} must be int, float, str or bool")
            out[name] = Option(name, py_type, (), kind.limits.get(name, Limit()))
    return out


def options_of(kind: Kind, request: orchestrator_pb2.SubmitJobRequest) -> Any:
    """The kind's options in `request`: its options message, or its Struct."""
    if isinstance(kind.options, type):
        return getattr(request, kind.name)
    if kind.name in request.options:
        return request.options[kind.name]
    return struct_pb2.Struct()


def copy_options(request: orchestrator_pb2.SubmitJobRequest, opts: Any, kind: Kind) -> Message:
    """Params with every option the job (or its spec) set, under the same name;
    unset ones stay unset, so the stage's model defaults apply."""
    if kind.params_message is None:
        out = struct_pb2.Struct()
        out.CopyFrom(opts)
        return out
    params = kind.params_message()
    copy_set_fields(opts, params)
    return params


def copy_set_fields(source: Message, target: Message, names: tuple[str, ...] | None = None) -> None:
    """Copy the fields `source` sets (presence-aware) onto `target`'s fields of the
    same name: `names` only, or every field the two share."""
    target_fields = target.DESCRIPTOR.fields_by_name
    for fd in source.DESCRIPTOR.fields:
        if fd.name not in target_fields or (names is not None and fd.name not in names):
            continue
        if fd.has_presence:
            if not source.HasField(fd.name):
                continue
        elif getattr(source, fd.name) == fd.default_value:
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, fd.name).CopyFrom(getattr(source, fd.name))
        else:
            setattr(target, fd.name, getattr(source, fd.name))


def build_params(kind: Kind, request: orchestrator_pb2.SubmitJobRequest) -> Message:
    """The params `kind`'s stage gets for `request` (spec defaults merged in)."""
    opts = options_of(kind, request)
    if kind.build is None:
        return copy_options(request, opts, kind)
    return kind.build(request, opts)


# -- the registry -------------------------------------------------------------

_lock = threading.RLock()  # a plugin may register() while its entry point loads
_kinds: dict[str, Kind] = {}
_plugins_loaded = False


def register(kind: Kind, *, replace: bool = False) -> Kind:
    """Add a kind; a second kind of the same name (or model kind) is an error
    unless `replace`."""
    with _lock:
        _ensure_loaded()
        _add(kind, replace=replace)
    return kind


def _add(kind: Kind, *, replace: bool) -> None:
    if not replace:
        if kind.name in _kinds and _kinds[kind.name] is not kind:
            raise ValueError(f"stage kind {kind.name!r} is already registered")
        clash = [k.name for k in _kinds.values() if k.model_kind == kind.model_kind]
        if clash and clash != [kind.name]:
            raise ValueError(f"model kind {kind.model_kind!r} is already served by {clash[0]!r}")
    _kinds[kind.name] = kind


def unregister(name: str) -> None:
    with _lock:
        _kinds.pop(name, None)


@contextlib.contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    """`kind` registered for the block (tests)."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


def _ensure_loaded() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from stageflow.kinds import builtin

    for kind in builtin.KINDS:
        _add(kind, replace=False)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        for kind in loaded if isinstance(loaded, list | tuple) else [loaded]:
            if not isinstance(kind, Kind):
                raise TypeError(
                    f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP}) "
                    f"is a {type(kind).__name__}, not a stageflow.kinds.Kind"
                )
            _add(kind, replace=False)


def all_kinds() -> tuple[Kind, ...]:
    """Every registered kind: the built-ins first, in registration order."""
    with _lock:
        _ensure_loaded()
        return tuple(_kinds.values())


def names() -> tuple[str, ...]:
    return tuple(k.name for k in all_kinds())


def get(name: str) -> Kind:
    """The kind named `name`; KeyError listing the known ones."""
    for kind in all_kinds():
        if kind.name == name:
            return kind
    raise KeyError(f"unknown stage kind {name!r}; known: {', '.join(names())}")


def find(name: str) -> Kind | None:
    return next((k for k in all_kinds() if k.name == name), None)


def by_model_kind(model_kind: str) -> Kind:
    for kind in all_kinds():
        if kind.model_kind == model_kind:
            return kind
    known = ", ".join(k.model_kind for k in all_kinds())
    raise KeyError(f"unknown model kind {model_kind!r}; known: {known}")


def order_problem(names: Sequence[str]) -> str | None:
    """What is wrong with a stage order, from the kinds' declared inputs: the
    first stage must read no input, every later one its predecessor's output.
    None when it is fine (unknown names are the caller's to report)."""
    starters = [k.name for k in all_kinds() if k.first]
    if not names or names[0] not in starters:
        got = repr(names[0]) if names else "nothing"
        return f"must start with {' or '.join(starters)} (a stage without an input), got {got}"
    later = [n for n in names[1:] if n in starters]
    if later:
        return f"{later[0]} reads no input: it can only be the first stage"
    return None


def default_pipeline() -> tuple[str, ...]:
    """The stage order a job without a spec or `stages` runs: the built-ins'."""
    from stageflow.kinds import builtin

    return builtin.DEFAULT_PIPELINE


__all__ = [
    "ENTRY_POINT_GROUP",
    "GENERIC_FIELD",
    "Builder",
    "Checker",
    "Kind",
    "Limit",
    "Option",
    "all_kinds",
    "build_params",
    "by_model_kind",
    "copy_options",
    "copy_set_fields",
    "default_pipeline",
    "enum_prefix",
    "enum_short_names",
    "find",
    "get",
    "names",
    "options",
    "options_of",
    "order_problem",
    "params_field",
    "register",
    "registered",
    "unregister",
]
