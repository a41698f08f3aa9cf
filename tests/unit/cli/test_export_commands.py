"""`stageflow fetch`, `compare` and `get` against a fake orchestrator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stageflow.cli.export import differing
from stageflow.cli.jobs import free_path
from tests.unit.cli.fakes import FakeOrchestrator, carries_recipe
from tests.unit.cli.test_commands import BUNDLE, invoke

Fake = tuple[FakeOrchestrator, str]


@pytest.fixture
def finished_job(fake: Fake) -> str:
    _, address = fake
    assert invoke("submit", *BUNDLE, "--no-wait", "--address", address).exit_code == 0
    assert invoke("watch", "job-1", "--address", address).exit_code == 0
    return address


def test_fetch_writes_a_png_with_its_recipe_and_never_overwrites(
    finished_job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = invoke("fetch", "job-1", "--address", finished_job)
    assert first.exit_code == 0, first.output
    assert "image: job-1-v1.png" in first.stdout
    assert carries_recipe((tmp_path / "job-1-v1.png").read_bytes(), "job-1")
    again = invoke("fetch", "job-1", "--address", finished_job)
    assert again.exit_code == 0 and "image: job-1-v1-2.png" in again.stdout
    assert sorted(os.listdir(tmp_path)) == ["job-1-v1-2.png", "job-1-v1.png"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--format", "gif"], "--format: must be one of png, webp, jpeg"),
        (["--version", "7"], "version: job job-1 has no version 7 (has 1)"),
        (["--stage", "polish"], "stage: job job-1 version 1 has no stage 'polish' (has base"),
    ],
)
def test_fetch_bad_input_names_the_option_and_allowed_values(
    finished_job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("fetch", "job-1", *args, "--address", finished_job)
    assert result.exit_code == 2
    assert named in result.stderr.replace("\n", "")
    assert os.listdir(tmp_path) == []


def test_compare_needs_two_versions() -> None:
    result = invoke("compare", "job-1", "--versions", "3", "--address", "127.0.0.1:1")
    assert result.exit_code == 2 and "--versions: must name two or more" in result.stderr


def test_get_lists_the_versions_with_their_stages(finished_job: str) -> None:
    result = invoke("get", "job-1", "--address", finished_job)
    assert result.exit_code == 0, result.output
    assert "versions" in result.stdout and "v1" in result.stdout
    for stage in ("base", "refine", "upscale"):
        assert stage in result.stdout


def test_free_path_counts_up_past_existing_files(tmp_path: Path) -> None:
    (tmp_path / "j-v2.png").write_bytes(b"x")
    (tmp_path / "j-v2-2.png").write_bytes(b"x")
    assert free_path(tmp_path / "j-v2.png") == tmp_path / "j-v2-3.png"
    assert free_path(tmp_path / "j-v3.png") == tmp_path / "j-v3.png"


def test_differing_names_what_changed_per_version() -> None:
    from stageflow.v1 import orchestrator_pb2 as pb

    one = pb.Job(version=1)
    one.stages.add(stage="refine").request.refine.strength = 0.25
    three = pb.Job(version=3)
    three.CopyFrom(one)
    three.stages[0].request.refine.strength = 0.5
    three.bundle.overlay_text = "Dawn"
    assert differing([one, three]) == ["", "bundle.overlay_text=Dawn, refine.strength=0.5"]
