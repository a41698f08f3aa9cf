"""`stageflow rerun --set KEY=VALUE`: keys map onto the from-stage's options or the bundle."""

from __future__ import annotations

import pytest

from stageflow.cli.rerun import allowed_keys, parse_sets
from stageflow.core.errors import InvalidArgument


def test_sets_map_onto_the_stage_options_and_the_bundle() -> None:
    overrides = parse_sets(
        "refine", ["guidance_scale=9", "steps=12", "text=Chapter Two", "text_shadow=true"]
    )
    refine = {"guidance_scale": 9.0, "steps": 12, "text_shadow": True}
    assert overrides.options == {"refine": refine}
    assert overrides.bundle == {"overlay_text": "Chapter Two"}
    assert overrides.client_kwargs() == {
        "refine_options": refine,
        "bundle": {"overlay_text": "Chapter Two"},
    }


def test_an_unknown_key_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_sets("upscale", ["guidance_scale=9"])
    assert err.value.field == "--set guidance_scale"
    for key in ("mode", "tile_size", "tile_overlap", "text", "style"):
        assert key in err.value.message
    assert "guidance_scale" not in allowed_keys("upscale")


@pytest.mark.parametrize("item", ["steps=x", "steps", "=3", "text_shadow=maybe"])
def test_malformed_values_are_refused(item: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_sets("refine", [item])


def test_an_unknown_from_stage_is_reported_before_the_keys() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_sets("blur", ["steps=3", "nonsense=1"])
    assert err.value.field == "--from"
    assert "unknown stage 'blur'" in err.value.message and "refine" in err.value.message
