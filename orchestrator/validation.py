"""Submit-time checks, so a bad job fails with INVALID_ARGUMENT before it is queued.

`check_request` needs nothing but the request. `check_against_stage` compares
the request built for a stage with the limits that stage publishes through
Describe; errors name the SubmitJobRequest field the caller wrote.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from stageflow import kinds
from stageflow.core import limits
from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.bundle import submit_field
from stageflow.serving.limits import check_request as check_limits
from stageflow.v1 import orchestrator_pb2, stage_pb2


def check_stages(request: orchestrator_pb2.SubmitJobRequest) -> None:
    """`stages`, when given: known names, each at most once, in an order the
    kinds' inputs allow (the first reads no input). Linear in the list, whose
    length is checked first."""
    stages = list(request.stages)
    if not stages:
        return
    problem = limits.count_problem(len(stages), limits.MAX_STAGES)
    if problem:
        raise InvalidArgument("stages", problem)
    known = kinds.names()
    for name in stages:
        if name not in known:
            raise InvalidArgument(
                "stages", f"unknown stage {limits.quote(name)}; known stages: {', '.join(known)}"
            )
    counts = Counter(stages)
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        raise InvalidArgument("stages", f"each stage at most once, got {', '.join(repeated)} twice")
    if request.input_image:
        # The image is the input: the job starts at a stage that reads one.
        first = [name for name in stages if kinds.get(name).first]
        if first:
            raise InvalidArgument(
                "stages",
                f"must not include {first[0]} with an input_image: the image is the input",
            )
        return
    problem = kinds.order_problem(stages)
    if problem:
        raise InvalidArgument("stages", problem)


def check_request(request: orchestrator_pb2.SubmitJobRequest) -> None:
    """Everything that needs only the request: every field's maximum, enum
    values and finite numbers (serving.limits, as at the gRPC boundary), then
    the job's own rules. The stage rules on the requests built from it are
    `check_built`'s."""
    check_limits(request)
    check_stages(request)
    if not request.bundle.base.strip() and not request.input_image:
        raise InvalidArgument("bundle.base", "must not be empty")
    if request.bundle.overlay_text:
        problem = limits.text_chars_problem(request.bundle.overlay_text)
        if problem:
            raise InvalidArgument("bundle.overlay_text", problem)
    for name in ("width", "height"):
        value = getattr(request, name)
        # With an input_image, 0 (or unset) means the image's own size.
        if request.HasField(name) and value <= 0 and not (request.input_image and value == 0):
            raise InvalidArgument(name, f"must be > 0 when set, got {value}")
    if request.HasField("deadline_seconds") and not request.deadline_seconds > 0:
        raise InvalidArgument(
            "deadline_seconds", f"must be > 0 when set, got {request.deadline_seconds:g}"
        )
    for stage in request.options:
        kind = kinds.find(stage)
        if kind is None or kind.has_options_message:
            without = [k.name for k in kinds.all_kinds() if not k.has_options_message]
            hint = f"{', '.join(without)}" if without else "no kind of this orchestrator"
            raise InvalidArgument(
                f"options.{stage}",
                f"options by stage name are for kinds without an options field ({hint}); "
                + (
                    f"set `{stage}` instead"
                    if kind is not None
                    else f"unknown stage {limits.quote(stage)}"
                ),
            )
    if request.refine.HasField("mask_box"):
        box = request.refine.mask_box
        if not (0 <= box.left < box.right <= 1 and 0 <= box.top < box.bottom <= 1):
            raise InvalidArgument(
                "refine.mask_box",
                "must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got "
                f"({box.left:g}, {box.top:g}, {box.right:g}, {box.bottom:g})",
            )


def base_size(
    request: orchestrator_pb2.SubmitJobRequest, first: stage_pb2.DescribeResponse | None
) -> tuple[int, int] | None:
    """The job's base image size: what it asked for, else what its first
    stage's model makes when the size is unset (Describe's defaults); None
    while that stage cannot be asked."""
    sides = []
    for name in ("width", "height"):
        if request.HasField(name):
            sides.append(getattr(request, name))
        elif first is not None and name in first.defaults:
            sides.append(int(first.defaults[name]))
        else:
            return None
    return sides[0], sides[1]


def _set_params(run: stage_pb2.RunRequest) -> dict[str, Any]:
    """The numeric parameters `run` sets (unset ones take the stage's default)."""
    which = run.WhichOneof("params")
    if which is None:
        return {}
    if which == kinds.GENERIC_FIELD:
        return dict(json_format.MessageToDict(run.generic.values))
    params = getattr(run, which)
    out: dict[str, Any] = {}
    for fd in params.DESCRIPTOR.fields:
        if fd.has_presence and not params.HasField(fd.name):
            continue
        out[fd.name] = getattr(params, fd.name)
    return out


def check_against_stage(
    stage: str,
    run: stage_pb2.RunRequest,
    desc: stage_pb2.DescribeResponse,
    request: orchestrator_pb2.SubmitJobRequest,
    scale: int = 1,
    size: tuple[int, int] | None = None,
) -> None:
    """Raise InvalidArgument when `run` falls outside what `stage` accepts.

    The stage works at `scale` times the job's base size `size` (4 after an
    upscale, 1 before); without `size`, the size the job sets, else no size
    check (the stage checks it itself).
    """
    if size is None and request.HasField("width") and request.HasField("height"):
        size = (request.width, request.height)
    for name, side in zip(("width", "height"), size or (), strict=False):
        value = side * scale
        shown = f"{value}" if scale == 1 else f"{value} ({scale} x {side})"
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
    values = _set_params(run)
    for limit in desc.params:
        number = values.get(limit.name)
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue  # unset (the stage takes its default), or not a number
        if not limit.min <= number <= limit.max:
            lo, hi = (limit.min, limit.max) if isinstance(number, float) else _int_range(limit)
            raise InvalidArgument(
                submit_field(stage, limit.name, request),
                f"must be in [{lo:g}, {hi:g}] for the {stage} stage, got {number:g}"
                if isinstance(number, float)
                else f"must be in [{lo}, {hi}] for the {stage} stage, got {number}",
            )


def check_built(
    stage: str,
    run: stage_pb2.RunRequest,
    request: orchestrator_pb2.SubmitJobRequest,
    defaults: Mapping[str, float],
) -> None:
    """The stage kind's own rules (its `check`: the ones its stage applies)
    on the request built for `stage`; `defaults` from its Describe ({} when
    it cannot be asked). Errors name the SubmitJobRequest field."""
    kind = kinds.find(stage)
    which = run.WhichOneof("params")
    if kind is None or which is None:
        return
    params = getattr(run, which)
    try:
        values = _set_params(run)
        for name, limit in kind.limits.items():  # the bounds specs' defaults obey too
            value = values.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                problem = limit.problem(value)
                if problem:
                    raise InvalidArgument(name, problem)
        if kind.check is not None:
            kind.check(params, defaults)
    except InvalidArgument as err:
        field = submit_field(stage, err.field, request)
        raise InvalidArgument(field, err.message.removeprefix(f"{err.field}: ")) from None


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


def _param(
    run: stage_pb2.RunRequest,
    name: str,
    desc: stage_pb2.DescribeResponse | None,
    unset: float,
) -> float:
    """A numeric param of a built request: set, else the stage's Describe
    default, else `unset` (the value that means no hand-off)."""
    params = getattr(run, run.WhichOneof("params") or "", None)
    if params is None or name not in params.DESCRIPTOR.fields_by_name:
        return unset
    if params.HasField(name):
        return float(getattr(params, name))
    return float(desc.defaults.get(name, unset)) if desc is not None else unset


def check_handoff(
    pipeline: tuple[str, ...],
    runs: Mapping[str, stage_pb2.RunRequest],
    descs: Mapping[str, stage_pb2.DescribeResponse | None],
    request: orchestrator_pb2.SubmitJobRequest,
) -> None:
    """A job's latent hand-offs, as built (its own options over the spec's):
    a stage that stops early (its kind's `hands_off` option below 1) outputs
    latents, so the next stage must resume from them (`takes_over` above 0)
    in the same latent space (Describe's `latent_space`), and a stage that
    resumes needs a predecessor that stops early (a job starting from an
    upload has none). INVALID_ARGUMENT names the
    field the caller wrote; differing latent spaces are FAILED_PRECONDITION."""
    built = [name for name in pipeline if name in runs]

    def makes(name: str) -> bool:
        option = kinds.get(name).hands_off
        return bool(option) and _param(runs[name], option, descs.get(name), 1.0) < 1

    def resumes(name: str) -> bool:
        option = kinds.get(name).takes_over
        return bool(option) and _param(runs[name], option, descs.get(name), 0.0) > 0

    if built and resumes(built[0]):
        # Only a job that starts from an upload (`input_image`) skips the base:
        # an image, never latents, comes in.
        raise InvalidArgument(
            submit_field(built[0], kinds.get(built[0]).takes_over, request),
            f"resumes latents, but the job starts at {built[0]} from an uploaded image: "
            "set it to 0 for this job",
        )
    for before, name in itertools.pairwise(built):
        if resumes(name) and not makes(before):
            raise InvalidArgument(
                submit_field(name, kinds.get(name).takes_over, request),
                f"resumes latents, but {before} outputs an image (its denoising_end is 1)",
            )
    for i, name in enumerate(built):
        if not makes(name):
            continue
        field = submit_field(name, kinds.get(name).hands_off, request)
        nxt = built[i + 1] if i + 1 < len(built) else None
        if nxt is None or not kinds.get(nxt).takes_over:
            where = f"the next stage, {nxt}, reads images" if nxt else f"{name} is the last stage"
            raise InvalidArgument(field, f"below 1 outputs latents, but {where}")
        if not resumes(nxt):
            raise InvalidArgument(
                submit_field(nxt, kinds.get(nxt).takes_over, request),
                f"must be set (0 < x < 1) to resume {name}'s latents",
            )
        ours, theirs = descs.get(name), descs.get(nxt)
        if ours is not None and theirs is not None and ours.latent_space != theirs.latent_space:
            raise FailedPrecondition(
                f"latent hand-off {name} -> {nxt}: {name} makes {ours.latent_space or 'no'} "
                f"latents, {nxt} takes {theirs.latent_space or 'none'}"
            )
