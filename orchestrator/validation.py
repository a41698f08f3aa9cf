"""Submit-time checks, so a bad job fails with INVALID_ARGUMENT before it is queued.

`check_request` needs nothing but the request. `check_against_stage` compares
the request built for a stage with the limits that stage publishes through
Describe; errors name the SubmitJobRequest field the caller wrote.
"""

from __future__ import annotations

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.bundle import STAGE_BUILDERS, submit_field
from stageflow.v1 import orchestrator_pb2, stage_pb2


def check_stages(request: orchestrator_pb2.SubmitJobRequest) -> None:
    """`stages`, when given: known names, each at most once, base first."""
    stages = list(request.stages)
    if not stages:
        return
    known = ", ".join(STAGE_BUILDERS)
    for name in stages:
        if name not in STAGE_BUILDERS:
            raise InvalidArgument("stages", f"unknown stage {name!r}; known stages: {known}")
    repeated = sorted({name for name in stages if stages.count(name) > 1})
    if repeated:
        raise InvalidArgument("stages", f"each stage at most once, got {', '.join(repeated)} twice")
    if stages[0] != "base":
        raise InvalidArgument(
            "stages", f"must start with base (the only stage without an input), got {stages[0]!r}"
        )


def check_request(request: orchestrator_pb2.SubmitJobRequest) -> None:
    check_stages(request)
    if not request.bundle.base.strip():
        raise InvalidArgument("bundle.base", "must not be empty")
    for name in ("width", "height"):
        value = getattr(request, name)
        if value <= 0:
            raise InvalidArgument(name, f"must be > 0, got {value}")
    if request.HasField("deadline_seconds") and not request.deadline_seconds > 0:
        raise InvalidArgument(
            "deadline_seconds", f"must be > 0 when set, got {request.deadline_seconds:g}"
        )
    if request.refine.HasField("mask_box"):
        box = request.refine.mask_box
        if not (0 <= box.left < box.right <= 1 and 0 <= box.top < box.bottom <= 1):
            raise InvalidArgument(
                "refine.mask_box",
                "must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got "
                f"({box.left:g}, {box.top:g}, {box.right:g}, {box.bottom:g})",
            )


def check_against_stage(
    stage: str,
    run: stage_pb2.RunRequest,
    desc: stage_pb2.DescribeResponse,
    request: orchestrator_pb2.SubmitJobRequest,
    scale: int = 1,
) -> None:
    """Raise InvalidArgument when `run` falls outside what `stage` accepts.

    The stage works at `scale` times the job's base size (4 after an upscale,
    1 before), so width and height times `scale` are checked against it.
    """
    for name in ("width", "height"):
        value = getattr(request, name) * scale
        shown = f"{value}" if scale == 1 else f"{value} ({scale} x {getattr(request, name)})"
        if desc.max_side > 0 and not desc.min_side <= value <= desc.max_side:
            raise InvalidArgument(
                name,
                f"must be in [{desc.min_side}, {desc.max_side}] pixels for the {stage} "
                f"stage, got {shown}",
            )
        if desc.size_multiple > 1 and value % desc.size_multiple:
            raise InvalidArgument(
                name,
                f"must be a multiple of {desc.size_multiple} pixels for the {stage} "
                f"stage, got {shown}",
            )
    kind = run.WhichOneof("params")
    if kind is None:
        return
    params = getattr(run, kind)
    fields = params.DESCRIPTOR.fields_by_name
    for limit in desc.params:
        if limit.name not in fields:
            continue  # a range for a parameter this request does not carry
        if fields[limit.name].has_presence and not params.HasField(limit.name):
            continue  # unset: the stage takes its default
        value = getattr(params, limit.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not limit.min <= value <= limit.max:
            lo, hi = (limit.min, limit.max) if isinstance(value, float) else _int_range(limit)
            raise InvalidArgument(
                submit_field(stage, limit.name, request),
                f"must be in [{lo:g}, {hi:g}] for the {stage} stage, got {value:g}"
                if isinstance(value, float)
                else f"must be in [{lo}, {hi}] for the {stage} stage, got {value}",
            )


def _int_range(limit: stage_pb2.ParamRange) -> tuple[int, int]:
    """An integer field's range in full (a seed's, not 9.22337e+18); a double
    cannot hold int64's largest value, so it is clamped to it."""
    top = 2**63 - 1

    def clamp(bound: float) -> int:
        return top if bound >= top else -top - 1 if bound <= -top - 1 else int(bound)

    return clamp(limit.min), clamp(limit.max)


def check_model(stage: str, wanted: str, desc: stage_pb2.DescribeResponse, spec: str) -> None:
    """The stage serves the model the spec names ("name@version" or "name")."""
    name, _, version = wanted.partition("@")
    if desc.model.name != name or (version and desc.model.version != version):
        raise FailedPrecondition(
            f"pipeline spec {spec!r} wants model {wanted} on the {stage} stage, "
            f"which serves {desc.model.name}@{desc.model.version}"
        )
