"""grpcurl (a client that knows nothing of our code) lists and calls every
service through server reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (dev extra)")


def grpcurl(*args: str) -> str:
    assert GRPCURL is not None
    done = subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_process_lists_its_services(local_cluster: LocalCluster) -> None:
    for name, address in local_cluster.addresses.items():
        services = grpcurl(address, "list").split()
        expected = (
            "stageflow.v1.OrchestratorService"
            if name == "orchestrator"
            else "stageflow.v1.StageService"
        )
        assert expected in services
        assert "grpc.health.v1.Health" in services


def test_describe_and_run_a_stage_and_list_jobs(local_cluster: LocalCluster) -> None:
    described = json.loads(
        grpcurl(local_cluster.addresses["base"], "stageflow.v1.StageService/Describe")
    )
    assert described["kind"] == "txt2img" and described["ready"] is True
    assert described["model"]["backend"] == "torch"

    request = json.dumps(
        {"txt2img": {"prompt": "a red circle", "width": 32, "height": 32, "steps": 2}}
    )
    out = grpcurl("-d", request, local_cluster.addresses["base"], "stageflow.v1.StageService/Run")
    events = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert [e["progress"]["step"] for e in events[:-1]] == [1, 2]
    assert events[-1]["result"]["output"]["key"].endswith(".png")

    health = json.loads(grpcurl(local_cluster.orchestrator_address, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
    grpcurl(local_cluster.orchestrator_address, "stageflow.v1.OrchestratorService/ListJobs")
