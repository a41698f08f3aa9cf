"""Step caching needs the torch UNet's blocks: an ONNX Runtime stage offers
cache_interval 1 only (Describe says 1..1) and refuses more at validation,
naming the field and why, before any work."""

from __future__ import annotations

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.inference.base import LocalModel
from stageflow.inference.interface import RefineParams, Txt2ImgParams


def test_describe_offers_interval_one_only(ort_txt2img: LocalModel, ort_refine: LocalModel) -> None:
    assert ort_txt2img.describe().param_ranges["cache_interval"] == (1, 1)
    assert ort_refine.describe().param_ranges["cache_interval"] == (1, 1)


@pytest.mark.parametrize("interval", [2, 11])
def test_an_interval_above_one_is_refused_with_the_reason(
    ort_txt2img: LocalModel, ort_refine: LocalModel, interval: int
) -> None:
    message = f"cache_interval: must be 1 on the onnxruntime backend, got {interval}"
    with pytest.raises(InvalidArgument, match=message) as caught:
        ort_txt2img.validate(
            Txt2ImgParams(prompt="a castle", width=64, height=64, cache_interval=interval)
        )
    assert caught.value.field == "cache_interval" and "torch backend" in caught.value.message
    with pytest.raises(InvalidArgument, match=message):
        ort_refine.validate(RefineParams(prompt="a castle", cache_interval=interval))


def test_interval_one_runs_as_before(ort_txt2img: LocalModel) -> None:
    ort_txt2img.validate(Txt2ImgParams(prompt="a castle", width=64, height=64, cache_interval=1))
