"""The job page's rerun form: its fields, prefilled from a version, and the
RerunJobRequest a submitted form makes (pure; the orchestrator decides the
rest: ranges, which stages may change).

Each field is named by its RerunJobRequest path (``bundle.overlay_text``,
``refine.strength``), the name the orchestrator's INVALID_ARGUMENT names, so
an error lands beside its field with no mapping table. Only what differs
from the latest version is sent: RerunJob merges over the latest version, so
an unchanged field needs nothing, and a field of a stage before the rerun's
first stage is only refused when someone really changed it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stageflow.v1 import orchestrator_pb2 as pb


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


@dataclass(frozen=True)
class FormField:
    name: str  # the RerunJobRequest path: "bundle.style", "refine.strength"
    label: str
    parse: Callable[[str], Any] | None = None  # None: text, sent as typed
    multiline: bool = False
    step: str = "any"

    @property
    def group(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def attr(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def id(self) -> str:
        return self.name.replace(".", "-")


BUNDLE = "bundle"
FIELDS = (
    FormField("bundle.base", "Prompt", multiline=True),
    FormField("bundle.style", "Style"),
    FormField("bundle.overlay_text", "Overlay text"),
    FormField("bundle.negative_prompt", "Negative prompt"),
    FormField("base.steps", "Steps", _integer, step="1"),
    FormField("base.guidance_scale", "Guidance scale", _number),
    FormField("refine.strength", "Strength", _number),
    FormField("refine.steps", "Steps", _integer, step="1"),
    FormField("refine.seed", "Seed", _integer, step="1"),
)
_OPTION_GROUPS = set(pb.RerunJobRequest.DESCRIPTOR.fields_by_name) - {BUNDLE}


def _run(job: pb.Job, stage: str) -> pb.StageRun | None:
    return next((run for run in job.stages if run.stage == stage), None)


def _params(run: pb.StageRun | None) -> Any:
    """The stage's parameters message as sent (None before it was built)."""
    kind = run.request.WhichOneof("params") if run is not None else None
    return getattr(run.request, kind) if run is not None and kind else None


def fields_for(job: pb.Job) -> list[FormField]:
    """The bundle's fields, and those of the job's stages that a rerun can set."""
    stages = {run.stage for run in job.stages}
    return [
        f for f in FIELDS if f.group == BUNDLE or (f.group in stages and f.group in _OPTION_GROUPS)
    ]


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def prefill(job: pb.Job) -> dict[str, str]:
    """The form's values for `job`: its bundle, and the exact value each stage
    was sent ("" where the stage took its model's default)."""
    values = {}
    for f in fields_for(job):
        if f.group == BUNDLE:
            values[f.name] = getattr(job.bundle, f.attr)
            continue
        params = _params(_run(job, f.group))
        sent = params is not None and f.attr in params.DESCRIPTOR.fields_by_name
        values[f.name] = _shown(getattr(params, f.attr)) if sent and params.HasField(f.attr) else ""
    return values


@dataclass(frozen=True)
class Submitted:
    request: pb.RerunJobRequest
    values: dict[str, str]  # as typed, to show again beside an error
    errors: dict[str, str]  # field name -> problem; non-empty: send nothing


def _typed(form: Mapping[str, str], name: str) -> str | None:
    raw = form.get(name)
    return None if raw is None else raw.replace("\r\n", "\n")  # a textarea sends CRLF


def build(
    job_id: str, from_stage: str, form: Mapping[str, str], versions: Sequence[pb.Job]
) -> Submitted:
    """The RerunJobRequest of a submitted form: the fields that differ from
    the latest version (`prefill`), parsed; a field that does not parse is an
    error naming it, and nothing is sent."""
    latest = versions[-1]
    baseline = prefill(latest)
    request = pb.RerunJobRequest(job_id=job_id, from_stage=from_stage)
    values, errors = dict(baseline), {}
    for f in fields_for(latest):
        text = _typed(form, f.name)
        if text is None:
            continue
        values[f.name] = text
        if f.parse is not None:
            text = text.strip()
        if text == baseline[f.name]:
            continue
        if f.parse is None:
            setattr(request.bundle, f.attr, text)
            continue
        try:
            if not text:
                raise ValueError(f"a rerun keeps the last value ({baseline[f.name]}); enter one")
            value = f.parse(text)
        except ValueError as err:
            errors[f.name] = str(err)
            continue
        try:
            setattr(getattr(request, f.group), f.attr, value)
        except ValueError:  # past the proto field's range (int32 steps, int64 seed)
            errors[f.name] = f"out of range, got {text[:32]}"
    return Submitted(request, values, errors)
