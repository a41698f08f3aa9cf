"""The three built-in stage kinds: base (txt2img), refine, upscale.

Each builder turns a job (its request with the pipeline spec's defaults merged
in) into the stage's params. A builder sets what the job decides (the prompt,
the seed, the size it asked for, the refine mode its overlay text implies) and
copies only the options that are set: an unset option stays unset, so the
stage's model defaults apply (model.yaml's, else the model class's).
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from stageflow.core import limits
from stageflow.core.errors import InvalidArgument
from stageflow.kinds import Kind, Limit, copy_set_fields
from stageflow.v1 import orchestrator_pb2, stage_pb2

# Where overlay text goes, and what an inpaint pass without a box repaints:
# the bottom band of the image, in fractions.
TEXT_BAND = stage_pb2.Box(left=0.0, top=0.78, right=1.0, bottom=1.0)


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


def _base(
    request: orchestrator_pb2.SubmitJobRequest, opts: orchestrator_pb2.BaseOptions
) -> stage_pb2.Txt2ImgParams:
    params = stage_pb2.Txt2ImgParams(
        prompt=compose_prompt(request.bundle),
        negative_prompt=request.bundle.negative_prompt,
        seed=request.seed,
    )
    for name in ("width", "height"):
        if request.HasField(name):
            setattr(params, name, getattr(request, name))
    copy_set_fields(opts, params)
    return params


def refine_mode(request: orchestrator_pb2.SubmitJobRequest) -> stage_pb2.RefineMode:
    """The explicit mode, else inpaint the text band when there is overlay text."""
    opts = request.refine
    if opts.HasField("mode") and opts.mode != stage_pb2.REFINE_MODE_UNSPECIFIED:
        return opts.mode
    if request.bundle.overlay_text:
        return stage_pb2.REFINE_MODE_INPAINT
    return stage_pb2.REFINE_MODE_IMG2IMG


def _refine(
    request: orchestrator_pb2.SubmitJobRequest, opts: orchestrator_pb2.RefineOptions
) -> stage_pb2.RefineParams:
    text = request.bundle.overlay_text
    mode = refine_mode(request)
    params = stage_pb2.RefineParams(
        prompt=compose_prompt(request.bundle),
        negative_prompt=request.bundle.negative_prompt,
        mode=mode,
        # The job's seed unless the refine pass sets its own.
        seed=opts.seed if opts.HasField("seed") else request.seed,
    )
    copy_set_fields(
        opts,
        params,
        (
            "strength",
            "steps",
            "guidance_scale",
            "inpaint_mask_blur",
            "denoising_start",
            "cache_interval",
        ),
    )
    if text:
        # The typography pass: the stage draws `text` and inpaints its own mask.
        params.text = text
        if opts.HasField("mask_box"):
            params.text_box.CopyFrom(opts.mask_box)
        copy_set_fields(
            opts,
            params,
            (
                "text_placement",
                "text_color",
                "text_stroke",
                "text_shadow",
                "max_cer",
                "max_attempts",
            ),
        )
    elif opts.HasField("mask_box"):
        params.mask_box.CopyFrom(opts.mask_box)
    elif mode == stage_pb2.REFINE_MODE_INPAINT:
        params.mask_box.CopyFrom(TEXT_BAND)
    return params


def _check_prompts(params: Message) -> None:
    """The diffusion stages' prompt rules (the stage applies the same ones)."""
    for name in ("prompt", "negative_prompt"):
        problem = limits.prompt_problem(getattr(params, name), required=name == "prompt")
        if problem:
            what = "the composed prompt (base, style, overlay text)" if name == "prompt" else ""
            raise InvalidArgument(name, f"{what} {problem}".strip())


def _check_base(params: Message, defaults: Mapping[str, float]) -> None:
    _check_prompts(params)


def _check_refine(params: Message, defaults: Mapping[str, float]) -> None:
    """The refine stage's rules on what the orchestrator built: prompts, the
    overlay text, and at least one denoising step (steps × strength)."""
    assert isinstance(params, stage_pb2.RefineParams)
    _check_prompts(params)
    if params.text:
        problem = limits.text_chars_problem(params.text)
        if problem:
            raise InvalidArgument("text", problem)
    if params.denoising_start > 0:
        # A latent hand-off: the rest of the schedule from denoising_start, not strength.
        if params.text or params.mode == stage_pb2.REFINE_MODE_INPAINT:
            raise InvalidArgument(
                "denoising_start", "continues img2img only (no overlay text, no inpaint)"
            )
        return
    steps = params.steps if params.HasField("steps") else defaults.get("steps")
    if params.HasField("strength"):
        strength = params.strength
    else:
        strength = defaults.get("strength") or limits.default_strength(
            text=bool(params.text), inpaint=params.mode == stage_pb2.REFINE_MODE_INPAINT
        )
    if steps is not None:  # unknown while the stage cannot be asked
        problem = limits.refine_steps_problem(steps, strength)
        if problem:
            raise InvalidArgument("strength", problem)


BASE = Kind(
    name="base",
    model_kind="txt2img",
    summary="text to image (diffusion)",
    params_type="stageflow.inference.interface:Txt2ImgParams",
    params_message=stage_pb2.Txt2ImgParams,
    options=orchestrator_pb2.BaseOptions,
    build=_base,
    limits={
        "steps": Limit(ge=1),
        "guidance_scale": Limit(ge=0),
        "denoising_end": Limit(gt=0, le=1),
        "cache_interval": Limit(ge=1, le=10),
    },
    inputs=(),
    model_family="sd-txt2img",
    model_folder="tiny-sd",
    trained_folder="shapes-sd",
    families={"diffusers": "sd-txt2img", "onnx": "sd-txt2img"},
    top_level={
        "width": "width",
        "height": "height",
        "seed": "seed",
        "prompt": "bundle",
        "negative_prompt": "bundle.negative_prompt",
    },
    check=_check_base,
    hands_off="denoising_end",
)

REFINE = Kind(
    name="refine",
    summary="img2img / inpaint pass, and the typography pass for overlay text",
    params_type="stageflow.inference.interface:RefineParams",
    params_message=stage_pb2.RefineParams,
    options=orchestrator_pb2.RefineOptions,
    build=_refine,
    limits={
        "strength": Limit(gt=0, le=1),
        "steps": Limit(ge=1),
        "guidance_scale": Limit(ge=0),
        "inpaint_mask_blur": Limit(ge=0),
        "text_stroke": Limit(ge=0, le=0.2),
        "max_cer": Limit(ge=0, le=1),
        "max_attempts": Limit(ge=1),
        "denoising_start": Limit(ge=0, le=0.99),
        "cache_interval": Limit(ge=1, le=10),
    },
    model_family="sd-refine",
    model_folder="tiny-sd",
    trained_folder="shapes-sd",
    families={"diffusers": "sd-refine", "onnx": "sd-refine"},
    top_level={
        "seed": "seed",
        "prompt": "bundle",
        "negative_prompt": "bundle.negative_prompt",
        "text": "bundle.overlay_text",
    },
    check=_check_refine,
    takes_over="denoising_start",
)

UPSCALE = Kind(
    name="upscale",
    summary="learned super-resolution x4, tiled (or Lanczos)",
    params_type="stageflow.inference.interface:UpscaleParams",
    params_message=stage_pb2.UpscaleParams,
    options=orchestrator_pb2.UpscaleOptions,
    limits={"tile_size": Limit(ge=0), "tile_overlap": Limit(ge=0)},
    output_scale=4,
    model_family="esrgan",
    model_folder="tiny-esrgan-x4",
    trained_folder="shapes-esrgan-x4",
    families={"esrgan": "esrgan", "onnx": "esrgan"},
)

KINDS: tuple[Kind, ...] = (BASE, REFINE, UPSCALE)
# The default three-stage contract.
DEFAULT_PIPELINE: tuple[str, ...] = ("base", "refine", "upscale")
