"""What differs between two job versions: the names the job page highlights."""

from __future__ import annotations

from stageflow.client.recipe import changed_parameters, flat_parameters
from tests.unit.client.test_recipe import _job


def test_flat_parameters_name_the_bundle_stages_models_and_exact_params() -> None:
    flat = flat_parameters(_job())
    assert list(flat)[:7] == [
        "pipeline",
        "seed",
        "size",
        "bundle.base",
        "bundle.style",
        "bundle.overlay_text",
        "bundle.negative_prompt",
    ]
    assert flat["seed"] == "42" and flat["size"] == "32x32"
    assert flat["base.model"] == "tiny-sd@1" and flat["refine.model"] == "tiny-refine"
    assert flat["base.steps"] == "20" and flat["base.guidance_scale"] == "7.5"
    assert flat["refine.strength"] == "0.3"  # a float32, shown as it was meant
    assert flat["upscale.mode"] == "UPSCALE_MODE_LEARNED"
    assert "refine.steps" not in flat  # unset: the model's default, not a value


def test_a_rerun_with_new_text_changes_the_text_and_the_refine_params_only() -> None:
    first = _job()
    second = _job(version=2, rerun_from="refine")
    second.bundle.overlay_text = "SALE"
    second.stages[1].request.refine.text = "SALE"
    second.stages[1].request.refine.strength = 0.5
    assert changed_parameters(second, first) == {
        "bundle.overlay_text",
        "refine.text",
        "refine.strength",
    }
    assert changed_parameters(second, second) == set()
    assert changed_parameters(second, None) == set()


def test_a_nested_box_and_a_stage_only_one_version_has_are_changes() -> None:
    first = _job()
    second = _job(version=2, rerun_from="refine")
    second.stages[1].request.refine.mask_box.top = 0.75
    second.stages[1].request.refine.mask_box.bottom = 1.0
    del second.stages[2]
    changed = changed_parameters(second, first)
    assert {"refine.mask_box.top", "refine.mask_box.bottom"} <= changed
    assert {"upscale.model", "upscale.mode"} <= changed
