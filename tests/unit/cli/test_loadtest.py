"""The load tester's arithmetic: percentiles, merging processes, the report,
parameter parsing, how load is split, and the PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from stageflow.cli.loadgen import (
    InputRef,
    LoadConfig,
    Share,
    parse_sets,
    shares,
    split,
    stage_request,
)
from stageflow.cli.loadplot import HEIGHT, WIDTH, plot_report
from stageflow.cli.loadstats import Sample, WorkerResult, build_report, merge, percentile
from stageflow.cli.main import app
from stageflow.core.errors import InvalidArgument
from stageflow.v1 import stage_pb2

TIMING = {"queue_ms": 1.0, "load_inputs_ms": 2.0, "compute_ms": 30.0, "store_output_ms": 3.0}


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (50, 3.0), (90, 4.6), (100, 5.0), (25, 2.0)],
)
def test_percentile_interpolates_between_ranks_like_numpy(q: float, expected: float) -> None:
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan_and_out_of_range_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_merge_sorts_by_send_time_and_sums_the_clients() -> None:
    a = WorkerResult([Sample(10.0, 0.1, "OK"), Sample(12.0, 0.1, "OK")], 3, 0.5, 4.0, 0.001)
    b = WorkerResult([Sample(11.0, 0.2, "UNAVAILABLE")], 1, 0.25, 5.0, 0.002)

    merged = merge([a, b])

    assert [s.start_s for s in merged.samples] == [10.0, 11.0, 12.0]
    assert (merged.sent, merged.cpu_s, merged.wall_s) == (4, 0.75, 5.0)
    assert merged.max_send_lag_s == 0.002


def _samples() -> list[Sample]:
    ok = [Sample(100.0 + i, 0.1 * (i + 1), "OK", {**TIMING, "total_ms": 36.0}) for i in range(10)]
    errors = [Sample(100.5, 0.01, "RESOURCE_EXHAUSTED")] * 3 + [Sample(101.5, 0.02, "INTERNAL")]
    return ok + errors


def test_report_counts_errors_by_code_and_times_only_successes() -> None:
    first = WorkerResult(_samples(), sent=16, cpu_s=0.032, wall_s=10.0)
    first.error_details = {"RESOURCE_EXHAUSTED": "queue full"}
    second = WorkerResult(error_details={"RESOURCE_EXHAUSTED": "later", "INTERNAL": "boom"})
    merged = merge([first, second])

    report = build_report(merged, config={"kind": "txt2img"}, processes=1)

    assert (report["requests"], report["ok"]) == (14, 10)
    assert report["errors"] == {"INTERNAL": 1, "RESOURCE_EXHAUSTED": 3}
    assert report["error_details"] == {"INTERNAL": "boom", "RESOURCE_EXHAUSTED": "queue full"}
    # first send at 100 s, last completion at 109 + 1.0 s
    assert report["duration_s"] == pytest.approx(10.0)
    assert report["throughput_rps"] == pytest.approx(1.0)
    latency = report["latency_ms"]
    assert latency["max"] == pytest.approx(1000.0)
    assert latency["p50"] == pytest.approx(550.0)
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["server_ms"]["compute_ms"] == {"median": 30.0, "mean": 30.0}
    assert report["client"]["cpu_per_request_ms"] == pytest.approx(2.0)
    assert len(report["samples"]) == 14
    json.dumps(report)  # machine-readable as is


def test_empty_report_does_not_divide_by_zero() -> None:
    report = build_report(WorkerResult(), config={}, processes=1)
    assert (report["requests"], report["throughput_rps"]) == (0, 0.0)
    assert math.isnan(report["latency_ms"]["p50"])


def test_sets_are_typed_by_the_params_message() -> None:
    assert parse_sets("txt2img", ["steps=10", "width=64", "guidance_scale=7.5"]) == {
        "steps": 10,
        "width": 64,
        "guidance_scale": 7.5,
    }
    assert parse_sets("upscale", ["mode=lanczos"]) == {"mode": stage_pb2.UPSCALE_MODE_LANCZOS}
    assert parse_sets("orchestrator", ["width=64", "base.steps=3", "upscale.mode=lanczos"]) == {
        "width": 64,
        "base.steps": 3,
        "upscale.mode": "UPSCALE_MODE_LANCZOS",
    }


@pytest.mark.parametrize(
    ("kind", "item", "message"),
    [
        ("txt2img", "steps=many", "expected a number"),
        ("txt2img", "strength=0.5", "unknown key"),
        ("upscale", "mode=bicubic", "expected one of"),
        ("txt2img", "steps", "KEY=VALUE"),
        ("orchestrator", "steps=3", "STAGE.FIELD"),
    ],
)
def test_bad_sets_name_the_key(kind: str, item: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_sets(kind, [item])


def test_requests_vary_the_seed_unless_it_is_set() -> None:
    config = LoadConfig(address="x", kind="txt2img", params={"steps": 2}, job_id="j")
    request = stage_request(config, seed=7, request_id="r", job_id="j")
    assert (request.txt2img.seed, request.txt2img.steps, request.job_id) == (7, 2, "j")

    fixed = LoadConfig(address="x", kind="txt2img", params={"seed": 1})
    assert stage_request(fixed, seed=7, request_id="r", job_id="j").txt2img.seed == 1


def test_refine_requests_reuse_the_seeded_input() -> None:
    ref = InputRef("loadtest/inputs/a.png", "a" * 64, 10)
    config = LoadConfig(address="x", kind="refine", image=ref, params={"strength": 0.3})
    request = stage_request(config, seed=1, request_id="r", job_id="j")
    assert (request.image.key, request.image.sha256) == (ref.key, ref.sha256)
    assert request.refine.strength == pytest.approx(0.3)
    with pytest.raises(InvalidArgument, match="seeded input"):
        LoadConfig(address="x", kind="upscale")


def test_load_splits_over_processes() -> None:
    assert split(10, 3) == [4, 3, 3]
    closed = LoadConfig(address="x", kind="txt2img", concurrency=3, processes=2)
    assert [(s.concurrency, s.requests) for s in shares(closed)] == [(2, None), (1, None)]
    # Never more processes than requests in flight.
    assert len(shares(LoadConfig(address="x", kind="txt2img", concurrency=1, processes=4))) == 1
    counted = LoadConfig(
        address="x", kind="txt2img", rate=10, processes=2, duration_s=None, requests=5
    )
    assert shares(counted) == [Share(0, 0, 5.0, 3), Share(1, 0, 5.0, 2)]


def test_config_refuses_both_or_neither_stop_condition() -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        LoadConfig(address="x", kind="txt2img", duration_s=None)
    with pytest.raises(InvalidArgument, match="exactly one"):
        LoadConfig(address="x", kind="txt2img", duration_s=1, requests=3)


def test_plot_is_a_png_with_both_charts(tmp_path: Path) -> None:
    report = build_report(merge([WorkerResult(_samples())]), config={}, processes=1)
    path = tmp_path / "charts" / "report.png"

    plot_report(report, path)

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (WIDTH, HEIGHT)
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 16) or []}
    assert (40, 110, 200) in colours and (210, 50, 40) in colours, "OK bars and error dots"


def test_cli_refuses_refine_without_a_store() -> None:
    result = CliRunner().invoke(app, ["loadtest", "--address", "x:1", "--kind", "refine"])
    assert result.exit_code == 2
    assert "--store-url" in result.output


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then closed: nobody listens on it
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["orchestrator", "txt2img"])
def test_an_unreachable_target_is_a_clear_failure(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from stageflow.cli import loadgen

    monkeypatch.setattr(loadgen, "CONNECT_SECONDS", 1.0)
    started = time.monotonic()
    address = f"127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(
        app, ["loadtest", "--address", address, "--kind", kind, "--requests", "2"]
    )
    assert result.exit_code == 1, result.output
    assert f"cannot connect to {address}" in result.output
    assert time.monotonic() - started < 8


def test_a_run_where_every_request_failed_exits_non_zero(
    fake: tuple[object, str],
) -> None:
    servicer, address = fake
    servicer.outcome = "fail"  # type: ignore[attr-defined]
    result = CliRunner().invoke(
        app,
        ["loadtest", "--address", address, "--kind", "orchestrator", "--requests", "3"],
    )
    assert result.exit_code == 1, result.output
    assert "none of 3 requests succeeded" in result.output


def test_a_malformed_store_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        app,
        [
            "loadtest", "--address", "x:1", "--kind", "refine",
            "--store-url", "s3://Bad_Bucket?endpoint=http://127.0.0.1:1",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--store-url: the bucket of store URL" in result.output
    assert "Traceback" not in result.output
