"""Pipeline specs: versioned YAML files under `pipelines/`, one per pipeline.

A spec fixes the stage order, which configured stage service runs each stage,
the model it must serve (checked against Describe at submit), and default
parameters that replace the built-in defaults of orchestrator/bundle.py (the
job's own options still win). Specs are loaded and validated once at start-up:
a bad file stops the orchestrator with its path and the offending field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stageflow.v1 import orchestrator_pb2

DEFAULT_SPEC = "default"
SERVICES = ("base", "refine", "upscale")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseDefaults(_Strict):
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)


class RefineDefaults(_Strict):
    mode: Literal["img2img", "inpaint"] | None = None
    strength: float | None = Field(None, gt=0, le=1)
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = None
    inpaint_mask_blur: int | None = Field(None, ge=0)
    text_placement: Literal["bottom", "top", "center"] | None = None
    text_color: str | None = None
    text_stroke: float | None = Field(None, ge=0, le=0.2)
    text_shadow: bool | None = None
    max_cer: float | None = Field(None, ge=0, le=1)
    max_attempts: int | None = Field(None, ge=1)


class UpscaleDefaults(_Strict):
    mode: Literal["learned", "lanczos"] | None = None
    tile_size: int | None = Field(None, ge=0)
    tile_overlap: int | None = Field(None, ge=0)


# Enum fields written in YAML by their short name ("inpaint"), as on the CLI.
_ENUM_PREFIX = {
    "mode": {"refine": "REFINE_MODE_", "upscale": "UPSCALE_MODE_"},
    "text_placement": {"refine": "TEXT_PLACEMENT_"},
}


def _proto_dict(stage: str, defaults: _Strict) -> dict[str, Any]:
    """`defaults` as a proto-JSON dict of the stage's options message."""
    values = defaults.model_dump(exclude_none=True)
    for name, prefixes in _ENUM_PREFIX.items():
        if name in values and stage in prefixes:
            values[name] = prefixes[stage] + values[name].upper()
    return values


class _FallbackBase(_Strict):
    """A stage's second route, taken when the first stays RESOURCE_EXHAUSTED
    (e.g. out of GPU memory): another service and/or parameters that win over
    the job's own (a smaller tile_size, lanczos instead of the learned model)."""

    service: Literal["base", "refine", "upscale"] | None = None
    defaults: _Strict


class BaseFallback(_FallbackBase):
    defaults: BaseDefaults = BaseDefaults()


class RefineFallback(_FallbackBase):
    defaults: RefineDefaults = RefineDefaults()


class UpscaleFallback(_FallbackBase):
    defaults: UpscaleDefaults = UpscaleDefaults()


class _StageSpecBase(_Strict):
    stage: str
    service: Literal["base", "refine", "upscale"] | None = None
    # "name@version" (or "name"), compared with the stage's Describe at submit.
    model: str | None = Field(None, pattern=r"^[^@\s]+(@[^@\s]+)?$")
    defaults: _Strict
    fallback: _FallbackBase | None = None

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
        """The defaults as a proto-JSON dict of the stage's options message."""
        return _proto_dict(self.stage, self.defaults)


class BaseStageSpec(_StageSpecBase):
    stage: Literal["base"]
    defaults: BaseDefaults = BaseDefaults()
    fallback: BaseFallback | None = None


class RefineStageSpec(_StageSpecBase):
    stage: Literal["refine"]
    defaults: RefineDefaults = RefineDefaults()
    fallback: RefineFallback | None = None


class UpscaleStageSpec(_StageSpecBase):
    stage: Literal["upscale"]
    defaults: UpscaleDefaults = UpscaleDefaults()
    fallback: UpscaleFallback | None = None


StageSpec = Annotated[
    BaseStageSpec | RefineStageSpec | UpscaleStageSpec, Field(discriminator="stage")
]


class PipelineSpec(_Strict):
    """One pipelines/<name>.yaml file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    stages: list[StageSpec] = Field(min_length=1)
    # Filled by the loader: the sha256 of the file's bytes, recorded on each job.
    sha256: str = ""

    @model_validator(mode="after")
    def _order(self) -> PipelineSpec:
        names = [s.stage for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"each stage at most once, got {', '.join(repeated)} twice")
        if names[0] != "base":
            raise ValueError(f"must start with base (the only stage without an input): {names}")
        return self

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages)

    def stage(self, name: str) -> BaseStageSpec | RefineStageSpec | UpscaleStageSpec | None:
        return next((s for s in self.stages if s.stage == name), None)


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and the field."""


def builtin_spec(order: Sequence[str]) -> PipelineSpec:
    """The spec used when no pipelines folder is configured: `order`, no defaults."""
    return PipelineSpec.model_validate(
        {"name": DEFAULT_SPEC, "stages": [{"stage": name} for name in order]}
    )


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
        spec = PipelineSpec.model_validate(raw)
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
        options = getattr(out, stage_spec.stage)
        merged = type(options)()
        json_format.ParseDict(defaults, merged)
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
    json_format.ParseDict(
        _proto_dict(stage, stage_spec.fallback.defaults),
        getattr(out, stage),
        ignore_unknown_fields=False,
    )
    return out


def fallback_services(spec: PipelineSpec) -> set[str]:
    """The services the spec's fallback routes name."""
    return {s.fallback_service for s in spec.stages if s.fallback_service is not None}
