"""Submit-time checks, so a bad job fails with INVALID_ARGUMENT before it is queued.

`check_request` needs nothing but the request. `check_against_stage` compares
the request built for a stage with the limits that stage publishes through
Describe; errors name the SubmitJobRequest field the caller wrote.
"""

from __future__ import annotations

from orchestrator.bundle import submit_field
from serving.errors import InvalidArgument
from stageflow.v1 import orchestrator_pb2, stage_pb2


def check_request(request: orchestrator_pb2.SubmitJobRequest) -> None:
    if not request.bundle.base.strip():
        raise InvalidArgument("bundle.base", "must not be empty")
    for name in ("width", "height"):
        value = getattr(request, name)
        if value <= 0:
            raise InvalidArgument(name, f"must be > 0, got {value}")
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
) -> None:
    """Raise InvalidArgument when `run` falls outside what `stage` accepts.

    Every stage here works at the job's base size (base writes it, refine keeps
    it, upscale reads it), so width and height are checked against each one.
    """
    for name in ("width", "height"):
        value = getattr(request, name)
        if desc.max_side > 0 and not desc.min_side <= value <= desc.max_side:
            raise InvalidArgument(
                name,
                f"must be in [{desc.min_side}, {desc.max_side}] pixels for the {stage} "
                f"stage, got {value}",
            )
        if desc.size_multiple > 1 and value % desc.size_multiple:
            raise InvalidArgument(
                name,
                f"must be a multiple of {desc.size_multiple} pixels for the {stage} "
                f"stage, got {value}",
            )
    kind = run.WhichOneof("params")
    if kind is None:
        return
    params = getattr(run, kind)
    fields = params.DESCRIPTOR.fields_by_name
    for limit in desc.params:
        if limit.name not in fields:
            continue  # a range for a parameter this request does not carry
        value = getattr(params, limit.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not limit.min <= value <= limit.max:
            raise InvalidArgument(
                submit_field(stage, limit.name, request),
                f"must be in [{limit.min:g}, {limit.max:g}] for the {stage} stage, got {value:g}",
            )
