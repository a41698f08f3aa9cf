"""LocalCluster's process handling, with a fake service in place of the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stageflow.cli.cluster import ClusterError, LocalCluster

FAKE_SERVICE = str(Path(__file__).with_name("fake_service.py"))
ALL = (
    "stageflow.stage.base",
    "stageflow.stage.refine",
    "stageflow.stage.upscale",
    "stageflow.orchestrator",
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for name in ("tiny-sd", "tiny-esrgan-x4"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model_index.json").write_text("{}")
    return tmp_path / "models"


@pytest.fixture
def fake_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        LocalCluster,
        "_launcher",
        # `python -m stageflow.stage base` records as "stageflow.stage.base".
        staticmethod(
            lambda module, *args: [sys.executable, FAKE_SERVICE, ".".join((module, *args))]
        ),
    )


@dataclass
class Recorded:
    argv: list[str]
    env: dict[str, str]

    @property
    def flags(self) -> dict[str, str]:
        return dict(zip(self.argv[::2], self.argv[1::2], strict=False))


def recorded(record: Path, module: str) -> Recorded:
    """What a fake service saw: its argv and the S3 variables of its environment."""
    return Recorded(**json.loads((record / f"{module}.json").read_text()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def make(tmp_path: Path, models: Path, **env: str) -> LocalCluster:
    record = tmp_path / "record"
    record.mkdir(exist_ok=True)
    return LocalCluster(
        state_dir=tmp_path / "state",
        models_dir=models,
        s3_access_key="AK",
        s3_secret_key="SECRET",
        torch_threads=2,
        extra_env={"FAKE_RECORD_DIR": str(record), **env},
        stage_args={"upscale": ["--max-side", "2048"]},
    )


def test_missing_models_fail_before_anything_starts(tmp_path: Path) -> None:
    cluster = LocalCluster(state_dir=tmp_path / "state", models_dir=tmp_path / "nothing")
    with pytest.raises(ClusterError) as err:
        cluster.start()
    message = str(err.value)
    assert str(tmp_path / "nothing" / "tiny-sd") in message
    assert "stageflow models build-fixtures" in message and "make setup" in message
    assert not (tmp_path / "state" / "logs").exists()


@pytest.mark.usefixtures("fake_launcher")
def test_start_wires_processes_and_stop_goes_orchestrator_first(
    tmp_path: Path, models: Path
) -> None:
    record = tmp_path / "record"
    with make(tmp_path, models) as cluster:
        addresses = cluster.addresses
        assert set(addresses) == {"base", "refine", "upscale", "orchestrator"}
        assert cluster.orchestrator_address == addresses["orchestrator"]
        procs = [cluster.process(n) for n in addresses]
        assert cluster.log_path("base") == tmp_path / "state" / "logs" / "base.log"

    orch = recorded(record, "stageflow.orchestrator").flags
    assert orch["--stages"] == ";".join(
        f"{s}={addresses[s]}" for s in ("base", "refine", "upscale")
    )
    assert orch["--db-path"] == str(tmp_path / "state" / "orchestrator.sqlite")
    assert orch["--store-url"] == (tmp_path / "state" / "store").as_uri()
    assert "--torch-threads" not in orch

    base = recorded(record, "stageflow.stage.base")
    assert base.flags["--model-path"] == str(models / "tiny-sd")
    assert base.flags["--torch-threads"] == "2"
    assert base.flags["--log-json"] == "true"
    # Secrets travel by environment, never on the command line.
    assert base.env == {"STAGEFLOW_S3_ACCESS_KEY": "AK", "STAGEFLOW_S3_SECRET_KEY": "SECRET"}
    assert "SECRET" not in " ".join(base.argv)
    upscale = recorded(record, "stageflow.stage.upscale").flags
    assert upscale["--model-path"] == str(models / "tiny-esrgan-x4")
    assert upscale["--max-side"] == "2048"

    assert all(p.returncode is not None for p in procs)
    orchestrator_stopped = int((record / "stageflow.orchestrator.stopped").read_text())
    for stage in ("base", "refine", "upscale"):
        stopped = record / f"stageflow.stage.{stage}.stopped"
        assert int(stopped.read_text()) > orchestrator_stopped
    cluster.stop()  # a second stop is harmless


@pytest.mark.usefixtures("fake_launcher")
def test_a_process_that_exits_fails_start_with_its_log(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path, models, FAKE_MODE_stageflow_stage_refine="exit")
    spawned: list[subprocess.Popen[bytes]] = []
    spawn = cluster._spawn

    def spy(name: str, argv: list[str], append_log: bool = False) -> None:
        spawn(name, argv, append_log)
        spawned.append(cluster.process(name))

    monkeypatch.setattr(cluster, "_spawn", spy)
    with pytest.raises(ClusterError) as err:
        cluster.start(timeout=30)
    message = str(err.value)
    assert "refine exited with status 3 before it was ready" in message
    assert "refine: cannot load model: no such file" in message
    assert len(spawned) == 3  # the orchestrator never started
    # The stages that did start were stopped again (and reaped).
    assert all(p.returncode is not None and not alive(p.pid) for p in spawned)


@pytest.mark.usefixtures("fake_launcher")
def test_stop_kills_what_ignores_sigterm(tmp_path: Path, models: Path) -> None:
    cluster = make(tmp_path, models, FAKE_MODE_stageflow_orchestrator="stubborn")
    cluster.start(timeout=30)
    orchestrator = cluster.process("orchestrator")
    cluster.stop(grace=0.5)
    assert orchestrator.returncode == -9
    assert not alive(orchestrator.pid)
    assert (tmp_path / "record" / "stageflow.stage.base.stopped").exists()


@pytest.mark.usefixtures("fake_launcher")
def test_restart_keeps_the_address(tmp_path: Path, models: Path) -> None:
    with make(tmp_path, models) as cluster:
        before = cluster.addresses["refine"]
        old_pid = cluster.process("refine").pid
        cluster.restart("refine", timeout=30)
        assert cluster.addresses["refine"] == before
        assert cluster.process("refine").pid != old_pid
