"""The `stageflow` job commands against a fake orchestrator on a real gRPC server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stageflow.cli.main import app
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2
from tests.unit.cli.fakes import FakeOrchestrator, carries_recipe

Fake = tuple[FakeOrchestrator, str]
BUNDLE = ["--base", "epic game hero portrait", "--style", "moody cinematic"]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    # Wide enough that rich never wraps the timing table in the assertions below.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_submit_downloads_final_and_prints_timings(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    out = tmp_path / "out"
    result = invoke(
        "submit", *BUNDLE, "--text", "Chapter One", "--seed", "7", "--steps", "12",
        "--guidance", "5.5", "--refine-strength", "0.3", "--upscale-mode", "lanczos",
        "--address", address, "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    final = out / "job-1.png"
    assert carries_recipe(final.read_bytes(), "job-1")
    assert f"final image: {final}" in result.stdout
    for stage in ("base", "refine", "upscale"):
        assert f"tiny-{stage}/1/torch" in result.stdout
    assert "30.0" in result.stdout  # compute ms
    sent = servicer.submits[0]
    assert sent.bundle.overlay_text == "Chapter One"
    # No size given: left unset, so the base model's default applies (one owner).
    assert sent.seed == 7 and not sent.HasField("width") and not sent.HasField("height")
    assert sent.base.steps == 12 and sent.base.guidance_scale == pytest.approx(5.5)
    assert sent.refine.strength == pytest.approx(0.3) and not sent.refine.HasField("steps")
    assert sent.upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS


def test_invalid_argument_prints_status_and_exits_2(fake: Fake) -> None:
    _, address = fake
    result = invoke("submit", *BUNDLE, "--width", "100", "--address", address)
    assert result.exit_code == 2
    assert (
        "INVALID_ARGUMENT: width: must be a multiple of 8 in [64, 1024], got 100" in result.stderr
    )
    assert "Traceback" not in result.output


def test_unknown_job_is_not_found_exit_2(fake: Fake) -> None:
    _, address = fake
    result = invoke("get", "nope", "--address", address)
    assert result.exit_code == 2
    assert "NOT_FOUND: job 'nope' not found" in result.stderr


def test_server_error_exits_1(fake: Fake) -> None:
    _, address = fake
    result = invoke("list", "--limit", "900", "--address", address)
    assert result.exit_code == 1
    assert "INTERNAL: database is locked" in result.stderr
    assert "Traceback" not in result.output


def test_failed_job_prints_error_exits_1(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    servicer.outcome = "fail"
    result = invoke("submit", *BUNDLE, "--address", address, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "job job-1 failed: refine: RESOURCE_EXHAUSTED: refine queue is full" in result.stderr
    assert not (tmp_path / "out").exists()


def test_corrupt_final_is_refused(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    servicer.outcome = "bad_digest"
    result = invoke("submit", *BUNDLE, "--address", address, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "DATA_LOSS: final image of job job-1: sha256 is" in result.stderr
    assert not (tmp_path / "out" / "job-1.png").exists()


def test_ctrl_c_while_watching_cancels_the_job(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    servicer.outcome = "interrupt"  # the fake sends us SIGINT once watching started
    result = invoke("submit", *BUNDLE, "--address", address, "--out", str(tmp_path))
    assert result.exit_code == 130
    assert servicer.cancels == ["job-1"]
    assert "cancelled job job-1" in result.stderr


def test_ctrl_c_in_watch_detaches_unless_told_to_cancel(fake: Fake) -> None:
    servicer, address = fake
    assert invoke("submit", *BUNDLE, "--no-wait", "--address", address).exit_code == 0
    servicer.outcome = "interrupt"
    result = invoke("watch", "job-1", "--address", address)
    assert result.exit_code == 130
    assert servicer.cancels == []
    assert "stopped watching job job-1; it keeps running" in result.stderr
    result = invoke("watch", "job-1", "--cancel", "--address", address)
    assert result.exit_code == 130
    assert servicer.cancels == ["job-1"]


def test_no_wait_json_and_address_from_env(fake: Fake) -> None:
    servicer, address = fake
    result = invoke("submit", *BUNDLE, "--no-wait", "--json", env={"STAGEFLOW_ADDRESS": address})
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["job"]["job_id"] == "job-1"
    assert printed["job"]["state"] == "JOB_STATE_QUEUED"
    assert len(servicer.submits) == 1


def test_list_passes_state_and_limit(fake: Fake) -> None:
    servicer, address = fake
    assert invoke("submit", *BUNDLE, "--no-wait", "--address", address).exit_code == 0
    result = invoke("list", "--state", "succeeded", "--limit", "5", "--address", address)
    assert result.exit_code == 0, result.output
    assert servicer.list_requests[0].state == pb.JOB_STATE_SUCCEEDED
    assert servicer.list_requests[0].page_size == 5
    assert "job-1" in result.stdout and "queued" in result.stdout


def test_watch_get_cancel(fake: Fake, tmp_path: Path) -> None:
    _, address = fake
    assert invoke("submit", *BUNDLE, "--no-wait", "--address", address).exit_code == 0
    watched = invoke("watch", "job-1", "--address", address, "--out", str(tmp_path))
    assert watched.exit_code == 0, watched.output
    assert carries_recipe((tmp_path / "job-1.png").read_bytes(), "job-1")
    got = invoke("get", "job-1", "--json", "--address", address)
    assert json.loads(got.stdout)["state"] == "JOB_STATE_SUCCEEDED"
    cancelled = invoke("cancel", "job-1", "--address", address)
    assert cancelled.exit_code == 0
    assert "job-1: cancelled" in cancelled.stdout


def test_unreachable_orchestrator_says_how_to_start_one() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke("get", "job-1", "--address", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr.startswith("UNAVAILABLE: ")
    assert "stageflow up" in result.stderr


def test_bad_choice_is_a_usage_error() -> None:
    result = invoke("submit", *BUNDLE, "--upscale-mode", "bicubic")
    assert result.exit_code == 2
    assert "bicubic" in result.output


def test_up_refuses_a_malformed_store_url_before_starting_anything() -> None:
    result = invoke("up", "--store-url", "s3://Bad_Bucket?endpoint=http://127.0.0.1:1")
    assert result.exit_code == 2
    assert "--store-url: the bucket of store URL" in result.stderr
    assert "'Bad_Bucket'" in result.stderr
