"""From a submitted job to the exact request each stage receives.

Pure functions: the prompt composition of the reference workflow's
`make_bundle`, the stage defaults (the reference refinement config: steps 40,
guidance 7.5, mask blur 4), and one request builder per stage, kept in a
registry so the pipeline order is data, not branches.
"""

from __future__ import annotations

from collections.abc import Callable

from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2

# The default three-stage contract; SubmitJobRequest.stages may reorder it.
DEFAULT_PIPELINE: tuple[str, ...] = ("base", "refine", "upscale")
# How many times each stage enlarges its input (others keep the size).
STAGE_SCALE: dict[str, int] = {"upscale": 4}

BASE_STEPS = 20
GUIDANCE_SCALE = 7.5
REFINE_STEPS = 40
REFINE_STRENGTH_INPAINT = 0.75
REFINE_STRENGTH_IMG2IMG = 0.35
# The typography pass only harmonises text drawn exactly: a light inpaint.
REFINE_STRENGTH_TEXT = 0.3
REFINE_MASK_BLUR = 4
# Where the overlay text goes: the bottom band of the image, in fractions.
TEXT_BAND = stage_pb2.Box(left=0.0, top=0.78, right=1.0, bottom=1.0)
UPSCALE_TILE_SIZE = 128
UPSCALE_TILE_OVERLAP = 24


def compose_prompt(bundle: orchestrator_pb2.PromptBundle) -> str:
    """The reference `make_bundle`: "{base}. Style: {style}." + the overlay clause.

    An empty (or blank) style drops the "Style: ." clause rather than sending a
    dangling label to the model: "{base}." alone. Text is used as given.
    """
    prompt = f"{bundle.base}."
    if bundle.style.strip():
        prompt += f" Style: {bundle.style}."
    if bundle.overlay_text:
        prompt += f" Overlay text: '{bundle.overlay_text}' with clear, legible typography."
    return prompt


def _base_params(request: orchestrator_pb2.SubmitJobRequest) -> stage_pb2.RunRequest:
    opts = request.base
    return stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(
            prompt=compose_prompt(request.bundle),
            negative_prompt=request.bundle.negative_prompt,
            width=request.width,
            height=request.height,
            steps=opts.steps if opts.HasField("steps") else BASE_STEPS,
            guidance_scale=(
                opts.guidance_scale if opts.HasField("guidance_scale") else GUIDANCE_SCALE
            ),
            seed=request.seed,
        )
    )


def refine_mode(request: orchestrator_pb2.SubmitJobRequest) -> stage_pb2.RefineMode:
    """The explicit mode, else inpaint the text band when there is overlay text."""
    opts = request.refine
    if opts.HasField("mode") and opts.mode != stage_pb2.REFINE_MODE_UNSPECIFIED:
        return opts.mode
    if request.bundle.overlay_text:
        return stage_pb2.REFINE_MODE_INPAINT
    return stage_pb2.REFINE_MODE_IMG2IMG


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
        scale *= STAGE_SCALE.get(stage, 1)
    return scales


def _refine_params(request: orchestrator_pb2.SubmitJobRequest) -> stage_pb2.RunRequest:
    opts = request.refine
    text = request.bundle.overlay_text
    mode = refine_mode(request)
    inpaint = mode == stage_pb2.REFINE_MODE_INPAINT
    if text:
        default_strength = REFINE_STRENGTH_TEXT
    elif inpaint:
        default_strength = REFINE_STRENGTH_INPAINT
    else:
        default_strength = REFINE_STRENGTH_IMG2IMG
    params = stage_pb2.RefineParams(
        prompt=compose_prompt(request.bundle),
        negative_prompt=request.bundle.negative_prompt,
        mode=mode,
        strength=opts.strength if opts.HasField("strength") else default_strength,
        steps=opts.steps if opts.HasField("steps") else REFINE_STEPS,
        guidance_scale=(opts.guidance_scale if opts.HasField("guidance_scale") else GUIDANCE_SCALE),
        seed=opts.seed if opts.HasField("seed") else request.seed,
        inpaint_mask_blur=(
            opts.inpaint_mask_blur if opts.HasField("inpaint_mask_blur") else REFINE_MASK_BLUR
        ),
    )
    if text:
        _add_text(params, text, opts)
    elif opts.HasField("mask_box"):
        params.mask_box.CopyFrom(opts.mask_box)
    elif inpaint:
        params.mask_box.CopyFrom(TEXT_BAND)
    return stage_pb2.RunRequest(refine=params)


def _add_text(
    params: stage_pb2.RefineParams, text: str, opts: orchestrator_pb2.RefineOptions
) -> None:
    """The typography pass: the refine stage draws `text` and inpaints its own mask."""
    params.text = text
    params.text_placement = opts.text_placement
    if opts.HasField("mask_box"):
        params.text_box.CopyFrom(opts.mask_box)
    params.text_color = opts.text_color
    params.text_shadow = opts.text_shadow
    for name in ("text_stroke", "max_cer", "max_attempts"):
        if opts.HasField(name):
            setattr(params, name, getattr(opts, name))


def _upscale_params(request: orchestrator_pb2.SubmitJobRequest) -> stage_pb2.RunRequest:
    opts = request.upscale
    explicit_mode = opts.HasField("mode") and opts.mode != stage_pb2.UPSCALE_MODE_UNSPECIFIED
    return stage_pb2.RunRequest(
        upscale=stage_pb2.UpscaleParams(
            mode=opts.mode if explicit_mode else stage_pb2.UPSCALE_MODE_LEARNED,
            tile_size=opts.tile_size if opts.HasField("tile_size") else UPSCALE_TILE_SIZE,
            tile_overlap=(
                opts.tile_overlap if opts.HasField("tile_overlap") else UPSCALE_TILE_OVERLAP
            ),
        )
    )


StageBuilder = Callable[[orchestrator_pb2.SubmitJobRequest], stage_pb2.RunRequest]

# Stage name -> builder of its parameters. A new stage is one entry here.
STAGE_BUILDERS: dict[str, StageBuilder] = {
    "base": _base_params,
    "refine": _refine_params,
    "upscale": _upscale_params,
}


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
        builder = STAGE_BUILDERS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGE_BUILDERS)}") from None
    run = builder(request)
    run.job_id = job_id
    run.request_id = f"{job_id}.{stage}" if job_id else ""
    run.output_prefix = output_prefix
    if image is not None:
        run.image.CopyFrom(image)
    return run


def with_input(run: stage_pb2.RunRequest, image: common_pb2.ArtifactRef) -> stage_pb2.RunRequest:
    """A copy of `run` reading `image` (the previous stage's output)."""
    out = stage_pb2.RunRequest()
    out.CopyFrom(run)
    out.image.CopyFrom(image)
    return out


# Stage parameters the caller sets at the top level of SubmitJobRequest.
_TOP_LEVEL = {("base", "width"), ("base", "height"), ("base", "seed")}


def submit_field(stage: str, param: str, request: orchestrator_pb2.SubmitJobRequest) -> str:
    """The SubmitJobRequest field a caller sets to change `stage`'s `param`,
    so errors name what the caller wrote ("width", "refine.strength")."""
    if (stage, param) in _TOP_LEVEL:
        return param
    if (stage, param) == ("refine", "seed") and not request.refine.HasField("seed"):
        return "seed"
    return f"{stage}.{param}"
