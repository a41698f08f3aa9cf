"""Describe says exactly what the base stage accepts: each published edge is
accepted, one step past it is refused (INVALID_ARGUMENT naming the field),
and a bare call with no size gets the size Describe lists as its default.

One real stage process (the session cluster's base stage, random-weight
fixture), real gRPC; each accepted call is one step at the smallest side but
the one under test, so the edges cost little.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.v1 import stage_pb2
from stageflow.v1 import stage_pb2_grpc as stage_grpc

WAIT = 120


@pytest.fixture(scope="module")
def base(local_cluster: LocalCluster) -> Iterator[stage_grpc.StageServiceStub]:
    with grpc.insecure_channel(local_cluster.addresses["base"]) as channel:
        yield stage_grpc.StageServiceStub(channel)


def _run(stub: stage_grpc.StageServiceStub, **params: Any) -> stage_pb2.StageResult:
    request = stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="a red circle", **params))
    results = [r.result for r in stub.Run(request, timeout=WAIT) if r.HasField("result")]
    assert len(results) == 1
    return results[0]


def _refused(stub: stage_grpc.StageServiceStub, field: str, **params: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _run(stub, **params)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_every_size_edge_describe_publishes_is_the_edge_validation_applies(
    base: stage_grpc.StageServiceStub,
) -> None:
    desc = base.Describe(stage_pb2.DescribeRequest(), timeout=WAIT)
    lo, hi, step = desc.min_side, desc.max_side, desc.size_multiple
    assert 1 <= lo <= hi and step >= 1 and lo % step == 0 and hi % step == 0
    small = {"steps": 1, "width": lo, "height": lo}
    for side in ("width", "height"):
        assert getattr(_run(base, **{**small, side: lo}), side) == lo
        assert getattr(_run(base, **{**small, side: hi}), side) == hi
        _refused(base, side, **{**small, side: lo - step})
        _refused(base, side, **{**small, side: hi + step})
        if step > 1:  # between two multiples, inside the range
            _refused(base, side, **{**small, side: lo + step + step // 2})
            assert getattr(_run(base, **{**small, side: lo + step}), side) == lo + step


def test_every_param_range_describe_publishes_is_the_range_validation_applies(
    base: stage_grpc.StageServiceStub,
) -> None:
    desc = base.Describe(stage_pb2.DescribeRequest(), timeout=WAIT)
    small = {"steps": 1, "width": desc.min_side, "height": desc.min_side}
    ranges = {r.name: r for r in desc.params}
    assert {"steps", "guidance_scale"} <= set(ranges)
    steps, guidance = ranges["steps"], ranges["guidance_scale"]
    _run(base, **{**small, "steps": int(steps.min)})
    _run(base, **{**small, "steps": int(steps.max)})
    _refused(base, "steps", **{**small, "steps": int(steps.min) - 1})
    _refused(base, "steps", **{**small, "steps": int(steps.max) + 1})
    _run(base, **small, guidance_scale=guidance.min)
    _run(base, **small, guidance_scale=guidance.max)
    _refused(base, "guidance_scale", **small, guidance_scale=guidance.min - 0.01)
    _refused(base, "guidance_scale", **small, guidance_scale=guidance.max + 0.01)


def test_a_bare_call_gets_the_size_describe_lists_as_its_default(
    base: stage_grpc.StageServiceStub,
) -> None:
    desc = base.Describe(stage_pb2.DescribeRequest(), timeout=WAIT)
    result = _run(base, steps=1)
    assert (result.width, result.height) == (desc.defaults["width"], desc.defaults["height"])
    assert desc.defaults["steps"] == 20  # the model class's: no other owner sets it
