"""Prompt composition and the requests each stage receives."""

from __future__ import annotations

import pytest

from stageflow.orchestrator.bundle import (
    DEFAULT_PIPELINE,
    TEXT_BAND,
    build_run_request,
    compose_prompt,
    submit_field,
    with_input,
)
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2

REFERENCE = orchestrator_pb2.PromptBundle(
    base="epic game hero portrait", style="moody cinematic", overlay_text="Chapter One"
)


def _request(**kwargs: object) -> orchestrator_pb2.SubmitJobRequest:
    fields: dict[str, object] = {"bundle": REFERENCE, "seed": 7, "width": 128, "height": 96}
    fields.update(kwargs)
    return orchestrator_pb2.SubmitJobRequest(**fields)  # type: ignore[arg-type]


def test_compose_prompt_matches_the_reference_make_bundle() -> None:
    assert compose_prompt(REFERENCE) == (
        "epic game hero portrait. Style: moody cinematic. "
        "Overlay text: 'Chapter One' with clear, legible typography."
    )


def test_compose_prompt_without_overlay_text() -> None:
    bundle = orchestrator_pb2.PromptBundle(base="a castle", style="watercolor")
    assert compose_prompt(bundle) == "a castle. Style: watercolor."


@pytest.mark.parametrize("style", ["", "   "])
def test_compose_prompt_drops_an_empty_style_clause(style: str) -> None:
    bundle = orchestrator_pb2.PromptBundle(base="a castle", style=style, overlay_text="Hi")
    assert compose_prompt(bundle) == "a castle. Overlay text: 'Hi' with clear, legible typography."


def test_base_request_carries_the_job_and_leaves_unset_options_unset() -> None:
    req = build_run_request("base", _request(), job_id="job-1", output_prefix="out")
    assert req.WhichOneof("params") == "txt2img"
    p = req.txt2img
    assert p.prompt == compose_prompt(REFERENCE)
    assert (p.width, p.height, p.seed) == (128, 96, 7)
    # No default of the orchestrator's own: the stage's model decides.
    assert not p.HasField("steps") and not p.HasField("guidance_scale")
    assert (req.job_id, req.request_id, req.output_prefix) == ("job-1", "job-1.base", "out")
    assert not req.HasField("image")


def test_a_job_without_a_size_leaves_it_to_the_model() -> None:
    request = _request()
    request.ClearField("width")
    request.ClearField("height")
    p = build_run_request("base", request).txt2img
    assert not p.HasField("width") and not p.HasField("height")


def test_base_request_takes_set_options_even_zero() -> None:
    # An explicit 0 is the caller's value (the stage will reject it), not "unset".
    req = build_run_request("base", _request(base=orchestrator_pb2.BaseOptions(steps=0)))
    assert req.txt2img.steps == 0
    req = build_run_request(
        "base", _request(base=orchestrator_pb2.BaseOptions(steps=5, guidance_scale=1.0))
    )
    assert (req.txt2img.steps, req.txt2img.guidance_scale) == (5, 1.0)


def test_refine_runs_the_typography_pass_when_there_is_overlay_text() -> None:
    p = build_run_request("refine", _request()).refine
    assert p.text == "Chapter One"
    assert p.mode == stage_pb2.REFINE_MODE_INPAINT
    assert p.seed == 7  # the job's
    # Strength, steps, guidance and blur are the model's defaults (the text
    # pass's light strength included): unset here.
    for name in ("strength", "steps", "guidance_scale", "inpaint_mask_blur"):
        assert not p.HasField(name), name
    # The stage inpaints the text's own mask: no box, and the bottom band by default.
    assert not p.HasField("mask_box") and not p.HasField("text_box")
    assert p.text_placement == stage_pb2.TEXT_PLACEMENT_UNSPECIFIED
    assert not p.HasField("max_cer") and not p.HasField("max_attempts")
    assert p.prompt == compose_prompt(REFERENCE)


def test_overlay_text_options_reach_the_refine_stage() -> None:
    box = stage_pb2.Box(left=0.1, top=0.1, right=0.9, bottom=0.3)
    opts = orchestrator_pb2.RefineOptions(
        mask_box=box,
        text_placement=stage_pb2.TEXT_PLACEMENT_TOP,
        text_color="#ffcc00",
        text_stroke=0.05,
        text_shadow=True,
        max_cer=0.1,
        max_attempts=2,
        strength=0.2,
    )
    p = build_run_request("refine", _request(refine=opts)).refine
    assert p.text_box == box and not p.HasField("mask_box")
    assert p.text_placement == stage_pb2.TEXT_PLACEMENT_TOP
    assert (p.text_color, p.text_shadow, p.max_attempts) == ("#ffcc00", True, 2)
    assert (p.text_stroke, p.max_cer, p.strength) == pytest.approx((0.05, 0.1, 0.2))


def test_refine_is_img2img_without_overlay_text() -> None:
    bundle = orchestrator_pb2.PromptBundle(base="a castle", style="ink", negative_prompt="blur")
    p = build_run_request("refine", _request(bundle=bundle)).refine
    assert p.mode == stage_pb2.REFINE_MODE_IMG2IMG
    assert not p.HasField("strength")
    assert not p.HasField("mask_box")
    assert p.negative_prompt == "blur"


def test_refine_options_override_defaults() -> None:
    box = stage_pb2.Box(left=0.1, top=0.1, right=0.5, bottom=0.5)
    opts = orchestrator_pb2.RefineOptions(
        mode=stage_pb2.REFINE_MODE_IMG2IMG,
        strength=0.5,
        steps=10,
        guidance_scale=3.0,
        seed=42,
        inpaint_mask_blur=0,
        mask_box=box,
    )
    bundle = orchestrator_pb2.PromptBundle(base="a castle")
    p = build_run_request("refine", _request(bundle=bundle, refine=opts)).refine
    assert p.mode == stage_pb2.REFINE_MODE_IMG2IMG
    assert (p.strength, p.steps, p.guidance_scale, p.seed) == (0.5, 10, 3.0, 42)
    assert p.inpaint_mask_blur == 0
    assert p.mask_box == box


def test_explicit_inpaint_mode_without_text_repaints_the_text_band() -> None:
    bundle = orchestrator_pb2.PromptBundle(base="a castle")
    opts = orchestrator_pb2.RefineOptions(mode=stage_pb2.REFINE_MODE_INPAINT)
    p = build_run_request("refine", _request(bundle=bundle, refine=opts)).refine
    assert p.mode == stage_pb2.REFINE_MODE_INPAINT
    assert not p.HasField("strength")  # the model's inpaint strength
    assert p.mask_box == TEXT_BAND


def test_upscale_defaults_and_overrides() -> None:
    p = build_run_request("upscale", _request()).upscale
    assert p.mode == stage_pb2.UPSCALE_MODE_UNSPECIFIED  # the stage's learned model
    assert not p.HasField("tile_size") and not p.HasField("tile_overlap")
    opts = orchestrator_pb2.UpscaleOptions(
        mode=stage_pb2.UPSCALE_MODE_LANCZOS, tile_size=0, tile_overlap=2
    )
    p = build_run_request("upscale", _request(upscale=opts)).upscale
    assert (p.mode, p.tile_size, p.tile_overlap) == (stage_pb2.UPSCALE_MODE_LANCZOS, 0, 2)


def test_input_image_is_attached_without_changing_the_original() -> None:
    ref = common_pb2.ArtifactRef(key="artifacts/sha256/ab/abc.png", sha256="abc", size_bytes=3)
    req = build_run_request("upscale", _request(), image=ref)
    assert req.image == ref
    plain = build_run_request("refine", _request())
    copied = with_input(plain, ref)
    assert copied.image == ref and not plain.HasField("image")
    assert copied.refine == plain.refine


def test_every_pipeline_stage_has_a_builder_and_unknown_stages_are_rejected() -> None:
    kinds = [build_run_request(s, _request()).WhichOneof("params") for s in DEFAULT_PIPELINE]
    assert kinds == ["txt2img", "refine", "upscale"]
    with pytest.raises(ValueError, match="typography"):
        build_run_request("typography", _request())


def test_submit_field_names_what_the_caller_wrote() -> None:
    assert submit_field("base", "width", _request()) == "width"
    assert submit_field("base", "steps", _request()) == "base.steps"
    assert submit_field("refine", "seed", _request()) == "seed"
    with_seed = _request(refine=orchestrator_pb2.RefineOptions(seed=1))
    assert submit_field("refine", "seed", with_seed) == "refine.seed"
    assert submit_field("upscale", "tile_size", _request()) == "upscale.tile_size"


def test_step_caching_is_a_job_option_of_base_and_refine() -> None:
    request = _request(
        base=orchestrator_pb2.BaseOptions(cache_interval=2),
        refine=orchestrator_pb2.RefineOptions(cache_interval=3),
    )
    assert build_run_request("base", request).txt2img.cache_interval == 2
    assert build_run_request("refine", request).refine.cache_interval == 3
    unset = build_run_request("base", _request()).txt2img
    assert not unset.HasField("cache_interval")  # the stage's default: off
