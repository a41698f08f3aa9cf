"""A base stage started with --dtype auto says what it resolved to and why, in
Describe and in every result's model info, and keys its cache by the resolved
dtype. One real stage process (random-weight fixture), real gRPC; the
expectation is this host's own /proc/cpuinfo read by the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.inference import hardware, precision
from stageflow.inference.base import folder_fingerprint, weight_bytes
from stageflow.inference.fixtures import SD_FOLDER
from stageflow.v1 import stage_pb2
from stageflow.v1 import stage_pb2_grpc as stage_grpc

WAIT = 120


@pytest.fixture(scope="module")
def auto_base(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[stage_grpc.StageServiceStub]:
    root = tmp_path_factory.mktemp("dtype-auto")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "default.yaml").write_text("stages:\n  - stage: base\n")
    with (
        LocalCluster(
            state_dir=root / "state",
            models_dir=fixture_models,
            stages=("base",),
            stage_args={"base": ["--dtype", "auto"]},
            orchestrator_args=["--pipelines-dir", str(root / "pipelines")],
        ) as cluster,
        grpc.insecure_channel(cluster.addresses["base"]) as channel,
    ):
        yield stage_grpc.StageServiceStub(channel)


def test_auto_reports_the_resolved_dtype_and_why_in_describe_and_results(
    auto_base: stage_grpc.StageServiceStub, fixture_models: Path
) -> None:
    folder = fixture_models / SD_FOLDER
    expected = hardware.choose_cast_dtype(
        "auto", hardware.detect(), weight_bytes=weight_bytes(folder)
    )
    desc = auto_base.Describe(stage_pb2.DescribeRequest(), timeout=WAIT)
    assert (desc.model.dtype, desc.model.dtype_setting) == (expected.dtype, "auto")
    assert desc.model.dtype_reason == expected.reason
    assert desc.model.dtype_reason.startswith(f"auto: {expected.dtype}")
    assert tuple(desc.cpu_features) == expected.cpu_features
    assert desc.cpu_capability == expected.cpu_capability
    # channels_last is auto by default too: off for the fixture's few MiB.
    assert desc.model.channels_last is False
    # The fingerprint (and so the cache key) is the resolved dtype's, never "auto"'s.
    files = folder_fingerprint(folder)
    assert desc.model.fingerprint == precision.with_dtype(files, expected.dtype)

    request = stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(prompt="a red circle", steps=1, width=32, height=32)
    )
    results = [r.result for r in auto_base.Run(request, timeout=WAIT) if r.HasField("result")]
    assert len(results) == 1
    assert results[0].model == desc.model
