"""`stageflow batch` against a fake orchestrator on a real gRPC server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stageflow.cli.batch import BatchFileError, parse_bundles
from stageflow.cli.main import app
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.cli.fakes import FakeOrchestrator, carries_recipe

Fake = tuple[FakeOrchestrator, str]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _write(path: Path, *bundles: object) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bundles))
    return path


def _summary(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _bundle(n: int, **extra: object) -> dict[str, object]:
    return {"base": f"hero {n}", "style": "moody", "seed": n, "width": 32, "height": 32, **extra}


def test_batch_submits_every_line_and_writes_a_summary(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    servicer.watch_delay = 0.05  # so jobs overlap and the concurrency bound matters
    bundles = _write(
        tmp_path / "bundles.jsonl",
        *(_bundle(n) for n in range(5)),
        _bundle(9, text="Chapter One", options={"refine": {"strength": 0.3}}),
    )
    out, summary = tmp_path / "out", tmp_path / "summary.jsonl"
    result = invoke(
        "batch", str(bundles), "--concurrency", "2", "--address", address,
        "--out", str(out), "--summary", str(summary),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "6 of 6 jobs succeeded" in result.stderr
    assert len(servicer.submits) == 6
    assert servicer.peak_watching == 2
    assert {r.priority for r in servicer.submits} == {pb.PRIORITY_BULK}
    last = servicer.submits[-1]
    assert last.bundle.overlay_text == "Chapter One"
    assert last.refine.strength == pytest.approx(0.3)
    rows = _summary(summary)
    assert [row["line"] for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert row["status"] == "succeeded"
        assert row["final_key"] == f"{row['job_id']}.png"
        assert carries_recipe(Path(str(row["final_path"])).read_bytes(), str(row["job_id"]))


def test_rerunning_the_same_file_starts_no_new_jobs(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    bundles = _write(tmp_path / "bundles.jsonl", _bundle(1), _bundle(2))
    summary = tmp_path / "summary.jsonl"
    args = ("batch", str(bundles), "--address", address, "--summary", str(summary))
    assert invoke(*args, "--out", str(tmp_path / "a")).exit_code == 0
    first = _summary(summary)
    assert invoke(*args, "--out", str(tmp_path / "b")).exit_code == 0
    second = _summary(summary)
    assert len(servicer.jobs) == 2  # the second run found both jobs
    assert [r["job_id"] for r in first] == [r["job_id"] for r in second]
    ids = [r.request_id for r in servicer.submits]
    assert sorted(ids[:2]) == sorted(ids[2:]) and len(set(ids)) == 2


def test_an_out_of_range_line_stops_the_batch_before_any_submit(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    bundles = _write(tmp_path / "b.jsonl", _bundle(1), _bundle(2, width=30), _bundle(3, width=31))
    result = invoke(
        "batch", str(bundles), "--address", address, "--out", str(tmp_path / "out"),
        "--summary", str(tmp_path / "summary.jsonl"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "line 2: " in result.stderr and "line 3: " in result.stderr
    assert "width" in result.stderr and "nothing was submitted" in result.stderr
    assert len(servicer.validations) == 3
    assert servicer.submits == []


def test_a_final_that_cannot_be_downloaded_fails_the_line(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    servicer.outcome = "bad_digest"  # every download arrives corrupted
    bundles = _write(tmp_path / "b.jsonl", _bundle(1), _bundle(2))
    summary = tmp_path / "summary.jsonl"
    result = invoke(
        "batch", str(bundles), "--address", address, "--out", str(tmp_path / "out"),
        "--summary", str(summary),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "0 of 2 jobs succeeded (2 final images not written)" in result.stderr
    rows = _summary(summary)
    assert [r["status"] for r in rows] == ["download_failed", "download_failed"]
    assert all(r["final_path"] is None for r in rows)
    # Each download was retried before the line was given up.
    assert len(servicer.artifact_requests) == 2 * 5


def test_a_download_waits_out_an_orchestrator_restart(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More UNAVAILABLE answers than DOWNLOAD_ATTEMPTS: a restart is a pause (the
    same wait a watch gets), not one of the attempts a corrupt download has."""
    monkeypatch.setattr("stageflow.cli.batch.random.uniform", lambda a, b: 0.01)
    servicer, address = fake
    servicer.unavailable_downloads = 8
    bundles = _write(tmp_path / "b.jsonl", _bundle(1))
    summary = tmp_path / "summary.jsonl"
    result = invoke(
        "batch", str(bundles), "--address", address, "--out", str(tmp_path / "out"),
        "--summary", str(summary),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in _summary(summary)] == ["succeeded"]
    assert len(servicer.artifact_requests) == 9
    assert "line 1: download failed (UNAVAILABLE" in result.stderr


def test_an_orchestrator_never_reached_fails_fast(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bundles = _write(tmp_path / "b.jsonl", _bundle(1))
    started = time.monotonic()
    result = invoke("batch", str(bundles), "--address", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert "cannot reach the orchestrator" in result.stderr


def test_a_bad_line_stops_the_batch_before_any_submit(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    bundles = tmp_path / "b.jsonl"
    bundles.write_text(json.dumps(_bundle(1)) + "\n\n" + '{"base": "x", "seed": "seven"}\n')
    result = invoke("batch", str(bundles), "--address", address)
    assert result.exit_code == 2
    assert "line 3" in result.stderr and "'seed' must be an integer" in result.stderr
    assert servicer.submits == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json\n", "line 1: not valid JSON"),
        ('{"style": "x"}\n', "line 1: 'base' (what to draw) is required"),
        ('{"base": "x", "colour": 1}\n', "line 1: unknown keys ['colour']"),
        ('{"base": "x", "options": {"paint": {}}}\n', "options.paint"),
        ("[1]\n", "line 1: expected a JSON object"),
        ("\n\n", "no bundles"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(BatchFileError) as caught:
        parse_bundles(text.encode())
    assert message in str(caught.value)


def test_request_ids_follow_content_and_line() -> None:
    a = parse_bundles(b'{"base": "x"}\n\n{"base": "y"}\n')
    again = parse_bundles(b'{"base": "x"}\n\n{"base": "y"}\n')
    other = parse_bundles(b'{"base": "x"}\n\n{"base": "z"}\n')
    assert [item.line for item in a] == [1, 3]
    assert [i.spec.request_id for i in a] == [i.spec.request_id for i in again]
    assert a[0].spec.request_id != other[0].spec.request_id  # another file: other jobs
    assert a[0].spec.request_id.endswith("-1") and a[1].spec.request_id.endswith("-3")
