"""From a submitted job to the exact request each stage receives.

Pure functions over the stage-kind registry (stageflow.kinds): each kind's
builder makes its params from the job (the reference workflow's prompt
composition included), and this module wraps them into the RunRequest. No
defaults live here: an option the job and its pipeline spec leave unset
stays unset, and the stage applies its model's default (model.yaml's, else
the model class's).
"""

from __future__ import annotations

from stageflow import kinds
from stageflow.kinds.builtin import DEFAULT_PIPELINE, TEXT_BAND, compose_prompt, refine_mode
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2

__all__ = [
    "DEFAULT_PIPELINE",
    "TEXT_BAND",
    "build_run_request",
    "compose_prompt",
    "input_scales",
    "pipeline_of",
    "refine_mode",
    "submit_field",
    "with_input",
]


def pipeline_of(
    request: orchestrator_pb2.SubmitJobRequest, default: tuple[str, ...] = DEFAULT_PIPELINE
) -> tuple[str, ...]:
    """The job's stage order: `stages` as given, else `default`."""
    return tuple(request.stages) or default


def input_scales(pipeline: tuple[str, ...]) -> dict[str, int]:
    """Each stage's input size as a multiple of the job's base size."""
    scales, scale = {}, 1
    for stage in pipeline:
        scales[stage] = scale
        kind = kinds.find(stage)
        scale *= kind.output_scale if kind is not None else 1
    return scales


def build_run_request(
    stage: str,
    request: orchestrator_pb2.SubmitJobRequest,
    *,
    job_id: str = "",
    output_prefix: str = "artifacts",
    image: common_pb2.ArtifactRef | None = None,
) -> stage_pb2.RunRequest:
    """The request for `stage`; `image` is the upstream output (None for the first stage)."""
    try:
        kind = kinds.get(stage)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    params = kinds.build_params(kind, request)
    run = stage_pb2.RunRequest()
    if kind.generic:
        run.generic.kind = kind.model_kind
        run.generic.values.MergeFrom(params)  # type: ignore[arg-type]  # a Struct
    else:
        getattr(run, kinds.params_field(kind)).CopyFrom(params)
    run.job_id = job_id
    run.request_id = f"{job_id}.{stage}" if job_id else ""
    run.output_prefix = output_prefix
    if image is not None:
        run.image.CopyFrom(image)
    return run


# The media type of a diffusion stage's latents (a latent hand-off's output).
LATENTS_MEDIA_TYPE = "application/x-safetensors"


def with_input(run: stage_pb2.RunRequest, image: common_pb2.ArtifactRef) -> stage_pb2.RunRequest:
    """A copy of `run` reading `image` (the previous stage's output): as its
    `latents` when the previous stage handed off latents, else as its `image`."""
    out = stage_pb2.RunRequest()
    out.CopyFrom(run)
    if image.media_type == LATENTS_MEDIA_TYPE:
        out.ClearField("image")
        out.latents.CopyFrom(image)
    else:
        out.ClearField("latents")
        out.image.CopyFrom(image)
    return out


def submit_field(stage: str, param: str, request: orchestrator_pb2.SubmitJobRequest) -> str:
    """The SubmitJobRequest field a caller sets to change `stage`'s `param`,
    so errors name what the caller wrote ("width", "refine.strength")."""
    kind = kinds.find(stage)
    if kind is None:
        return f"{stage}.{param}"
    if kind.has_options_message:
        opts = getattr(request, stage)
        fields = opts.DESCRIPTOR.fields_by_name
        explicit = param in fields and fields[param].has_presence and opts.HasField(param)
        if not explicit and param in kind.top_level:
            return kind.top_level[param]
        return f"{stage}.{param}"
    if param not in kinds.options_of(kind, request) and param in kind.top_level:
        return kind.top_level[param]
    return f"options.{stage}.{param}"
