"""Pipeline specs: versioned YAML files under `pipelines/`, one per pipeline.

A spec fixes the stage order, which configured stage service runs each stage,
the model it must serve (checked against Describe at submit), and default
options: under the job's own, over the model's (model.yaml's, then the model
class's). Each stage's entry model is derived from its kind's declaration
(stageflow.kinds). Specs are loaded and validated once at start-up: a bad file
stops the orchestrator with its path and the offending field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from stageflow import kinds
from stageflow.v1 import orchestrator_pb2

DEFAULT_SPEC = "default"
_SERVICE = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Defaults(_Strict):
    """A stage's default options; one subclass per kind, derived from its
    declaration (stageflow.kinds): every scalar option, optional, bounded by
    the kind's limits, enums by their short name ("inpaint")."""


def _option_type(option: kinds.Option) -> Any:
    if option.choices:
        return Literal[option.choices]
    bounds = {k: v for k, v in vars(option.limit).items() if v is not None}
    return Annotated[option.type, Field(**bounds)] if bounds else option.type


def _proto_dict(stage: str, defaults: _Strict) -> dict[str, Any]:
    """`defaults` as a proto-JSON dict of the stage's options (message or Struct)."""
    values = defaults.model_dump(exclude_none=True)
    kind = kinds.find(stage)
    if kind is None or not kind.has_options_message:
        return values
    assert isinstance(kind.options, type)
    fields = kind.options.DESCRIPTOR.fields_by_name
    for name, value in list(values.items()):
        enum_type = fields[name].enum_type
        if enum_type is not None:
            values[name] = kinds.enum_prefix(enum_type.name) + str(value).upper()
    return values


class _FallbackBase(_Strict):
    """A stage's second route, taken when the first stays RESOURCE_EXHAUSTED
    (e.g. out of GPU memory): another service and/or parameters that win over
    the job's own (a smaller tile_size, lanczos instead of the learned model)."""

    service: str | None = Field(None, pattern=_SERVICE)
    defaults: _Strict


class _StageSpecBase(_Strict):
    stage: str
    # The configured stage service (a key of the orchestrator's `stages`) that
    # runs it; default: the one named like the stage.
    service: str | None = Field(None, pattern=_SERVICE)
    # "name@version" (or "name"), compared with the stage's Describe at submit.
    model: str | None = Field(None, pattern=r"^[^@\s]+(@[^@\s]+)?$")
    defaults: _Strict
    fallback: _FallbackBase | None = None
    # What this stage passes to the next: its image, or (`latent`, a diffusion
    # pair) its latents, stopping at its `denoising_end` for the next stage to
    # resume at its `denoising_start`, with no VAE decode and re-encode between.
    handoff: Literal["image", "latent"] = "image"

    @property
    def service_name(self) -> str:
        return self.service or self.stage

    @property
    def fallback_service(self) -> str | None:
        """The service of the fallback route; None without one."""
        if self.fallback is None:
            return None
        return self.fallback.service or self.service_name

    def defaults_dict(self) -> dict[str, Any]:
        """The defaults as a proto-JSON dict of the stage's options."""
        return _proto_dict(self.stage, self.defaults)


def _stage_spec_model(kind: kinds.Kind) -> type[_StageSpecBase]:
    title = "".join(part.title() for part in kind.name.split("-"))
    fields: dict[str, Any] = {
        name: (_option_type(option) | None, None) for name, option in kinds.options(kind).items()
    }
    defaults = create_model(f"{title}Defaults", __base__=_Defaults, **fields)
    fallback = create_model(
        f"{title}Fallback", __base__=_FallbackBase, defaults=(defaults, defaults())
    )
    model: type[_StageSpecBase] = create_model(
        f"{title}StageSpec",
        __base__=_StageSpecBase,
        stage=(Literal[kind.name], ...),  # type: ignore[arg-type]
        defaults=(defaults, defaults()),
        fallback=(fallback | None, None),
    )
    return model


def stage_spec_models() -> dict[str, type[_StageSpecBase]]:
    """Kind name -> the pydantic model of a spec's entry for that stage."""
    return {kind.name: _cached_model(kind) for kind in kinds.all_kinds()}


_BY_KIND: dict[str, tuple[kinds.Kind, type[_StageSpecBase]]] = {}


def _cached_model(kind: kinds.Kind) -> type[_StageSpecBase]:
    cached = _BY_KIND.get(kind.name)
    if cached is None or cached[0] is not kind:
        cached = (kind, _stage_spec_model(kind))
        _BY_KIND[kind.name] = cached
    return cached[1]


StageSpec = _StageSpecBase


class PipelineSpec(_Strict):
    """One pipelines/<name>.yaml file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    stages: list[_StageSpecBase] = Field(min_length=1)
    # The stage order of a job whose bundle carries overlay text, when it
    # differs from `stages`' (the same stages, e.g. the typography pass after
    # the upscale, where the text is large enough to read). A job's own
    # `stages` still win.
    text_order: list[str] | None = None
    # Filled by the loader: the sha256 of the file's bytes, recorded on each job.
    sha256: str = ""

    @classmethod
    def parse(cls, data: Any) -> PipelineSpec:
        """Validate `data` against the kinds registered now (the entry models
        are derived from the registry, so the union is built per call)."""
        models = tuple(stage_spec_models().values())
        entry: Any = Annotated[Union[models], Field(discriminator="stage")]  # noqa: UP007
        spec_model = create_model("PipelineSpec", __base__=cls, stages=(list[entry], ...))
        spec: PipelineSpec = spec_model.model_validate(data)
        return spec

    @model_validator(mode="after")
    def _order(self) -> PipelineSpec:
        names = [s.stage for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"each stage at most once, got {', '.join(repeated)} twice")
        problem = kinds.order_problem(names)
        if problem:
            raise ValueError(problem)
        if self.text_order is not None:
            if sorted(self.text_order) != sorted(names):
                raise ValueError(
                    f"text_order: must list the stages {names} each once, got {self.text_order}"
                )
            problem = kinds.order_problem(self.text_order)
            if problem:
                raise ValueError(f"text_order: {problem}")
        for where, order in (("stages", names), ("text_order", self.text_order or [])):
            problem = self._handoff_problem(order)
            if problem:
                raise ValueError(f"{where}: {problem}")
        return self

    def _handoff_problem(self, order: Sequence[str]) -> str | None:
        """What breaks a latent hand-off in `order`: each `handoff: latent`
        stage must make latents (its kind's `hands_off` option set below 1) and
        be followed by a stage that takes them (`takes_over` set above 0)."""
        for i, name in enumerate(order):
            stage = self.stage(name)
            assert stage is not None
            kind, nxt = kinds.get(name), order[i + 1] if i + 1 < len(order) else None
            end = _default(stage, kind.hands_off)
            if stage.handoff == "image":
                if end is not None and end < 1:
                    return (
                        f"{name}: defaults.{kind.hands_off} {end:g} outputs latents; "
                        "set handoff: latent (and the next stage's start) or remove it"
                    )
                continue
            if not kind.hands_off:
                return f"{name}: handoff: latent, but {name} makes no latents (base does)"
            if end is None or not 0 < end < 1:
                return f"{name}: handoff: latent needs defaults.{kind.hands_off} in (0, 1)"
            if nxt is None:
                return f"{name}: handoff: latent, but no stage follows to take the latents"
            taker = kinds.get(nxt)
            if not taker.takes_over:
                return (
                    f"{name}: handoff: latent, but the next stage, {nxt}, reads images; "
                    "latents go to a diffusion stage (refine)"
                )
            start = _default(self.stage(nxt), taker.takes_over)
            if start is None or start <= 0:
                return (
                    f"{nxt}: defaults.{taker.takes_over} must be set (0 < x < 1) to resume "
                    f"{name}'s latents ({kind.hands_off} {end:g})"
                )
        for i, name in enumerate(order):
            kind = kinds.get(name)
            start = _default(self.stage(name), kind.takes_over)
            before = self.stage(order[i - 1]) if i > 0 else None
            if start and (before is None or before.handoff != "latent"):
                return (
                    f"{name}: defaults.{kind.takes_over} {start:g} resumes latents, but the "
                    "stage before it hands off an image (handoff: latent there)"
                )
        return None

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages)

    def order_for(self, bundle: orchestrator_pb2.PromptBundle) -> tuple[str, ...]:
        """The stage order of a job with `bundle`: `text_order` when it carries
        overlay text and the spec gives one, else `stages`' order."""
        if bundle.overlay_text and self.text_order is not None:
            return tuple(self.text_order)
        return self.order

    def stage(self, name: str) -> _StageSpecBase | None:
        return next((s for s in self.stages if s.stage == name), None)


def _default(stage: _StageSpecBase | None, option: str) -> float | None:
    """The spec's default for `option` of `stage`; None when unset or no option."""
    if stage is None or not option:
        return None
    value = getattr(stage.defaults, option, None)
    return None if value is None else float(value)


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and the field."""


def builtin_spec(order: Sequence[str]) -> PipelineSpec:
    """The spec used when no pipelines folder is configured: `order`, no defaults."""
    return PipelineSpec.parse({"name": DEFAULT_SPEC, "stages": [{"stage": name} for name in order]})


def parse_spec(path: Path) -> PipelineSpec:
    """Parse and validate one spec file; SpecError names the file and field."""
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a mapping with `name` and `stages`")
    raw.setdefault("name", path.stem)
    try:
        spec = PipelineSpec.parse(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        raise SpecError(f"{path}: {problems}") from None
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: {spec.name!r} must match the file name {path.stem!r}")
    return spec.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()})


def load_specs(folder: Path) -> dict[str, PipelineSpec]:
    """Every `*.yaml` in `folder` by name; it must hold a `default` spec."""
    if not folder.is_dir():
        raise SpecError(f"{folder}: pipelines folder not found")
    specs = {spec.name: spec for spec in map(parse_spec, sorted(folder.glob("*.yaml")))}
    if DEFAULT_SPEC not in specs:
        raise SpecError(f"{folder}: no {DEFAULT_SPEC}.yaml spec")
    return specs


def _options(request: orchestrator_pb2.SubmitJobRequest, stage: str) -> Message:
    """The options `request` carries for `stage`, to write into: its options
    message, or its entry of `options` (kinds without a message)."""
    kind = kinds.find(stage)
    if kind is not None and kind.has_options_message:
        opts: Message = getattr(request, stage)
        return opts
    return request.options[stage]


def with_defaults(
    request: orchestrator_pb2.SubmitJobRequest, spec: PipelineSpec
) -> orchestrator_pb2.SubmitJobRequest:
    """`request` with the spec's default options filled in under its own."""
    out = orchestrator_pb2.SubmitJobRequest()
    out.CopyFrom(request)
    for stage_spec in spec.stages:
        defaults = stage_spec.defaults_dict()
        if not defaults:
            continue
        options = _options(out, stage_spec.stage)
        merged = type(options)()
        json_format.ParseDict(defaults, merged)
        if isinstance(merged, struct_pb2.Struct):
            merged.update(json_format.MessageToDict(options))  # key by key, the job's win
        else:
            merged.MergeFrom(options)  # the job's own options win
        options.CopyFrom(merged)
    return out


def services_of(spec: PipelineSpec, order: Sequence[str]) -> Mapping[str, str]:
    """Stage name -> the configured service that runs it (the stage's own by default)."""
    out = {}
    for name in order:
        stage_spec = spec.stage(name)
        out[name] = stage_spec.service_name if stage_spec is not None else name
    return out


def with_fallback(
    request: orchestrator_pb2.SubmitJobRequest, spec: PipelineSpec, stage: str
) -> orchestrator_pb2.SubmitJobRequest | None:
    """The job's effective request for `stage`'s fallback route: the spec's
    defaults under the job's options, the fallback's defaults over both (the
    fallback exists to change them). None when the stage has no fallback."""
    stage_spec = spec.stage(stage)
    if stage_spec is None or stage_spec.fallback is None:
        return None
    out = with_defaults(request, spec)
    options = _options(out, stage)
    overrides = _proto_dict(stage, stage_spec.fallback.defaults)
    if isinstance(options, struct_pb2.Struct):
        options.update(overrides)
    else:
        json_format.ParseDict(overrides, options, ignore_unknown_fields=False)
    return out


def fallback_services(spec: PipelineSpec) -> set[str]:
    """The services the spec's fallback routes name."""
    return {s.fallback_service for s in spec.stages if s.fallback_service is not None}
