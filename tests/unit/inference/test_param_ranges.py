"""Range errors print their numbers as a person reads them."""

from __future__ import annotations

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import Txt2ImgParams, check_ranges


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "seed: must be in [0, 9223372036854775807], got -1"),
        ({"steps": 0}, "steps: must be in [1, 200], got 0"),
        ({"guidance_scale": 0.5}, "guidance_scale: must be in [1, 30], got 0.5"),
    ],
)
def test_an_integer_range_is_printed_in_full(change: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_ranges(Txt2ImgParams(prompt="a castle", **change))  # type: ignore[arg-type]
    assert caught.value.message == message
