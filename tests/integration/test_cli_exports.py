"""The CLI's artist loop over real processes: rerun files per version, fetch in
each format with its recipe, compare, and `get` listing every version."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.client import SyncStageflowClient
from stageflow.client.recipe import read_recipe
from stageflow.v1 import orchestrator_pb2 as pb

JOB = {
    "base": "a red circle on a blue background",
    "style": "cli export test",
    "seed": 4321,
    "width": 32,
    "height": 32,
}


def cli(cluster: LocalCluster, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stageflow.cli", *args, "--address", cluster.orchestrator_address],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


def test_rerun_fetch_compare_and_get(local_cluster: LocalCluster, tmp_path: Path) -> None:
    with SyncStageflowClient(local_cluster.orchestrator_address) as client:
        job = client.submit(**JOB)
        for _ in client.watch(job.job_id):
            pass
        v1 = client.get(job.job_id)
    assert v1.state == pb.JOB_STATE_SUCCEEDED, v1.error
    job_id = v1.job_id

    fetched = cli(local_cluster, tmp_path, "fetch", job_id, "--version", "1")
    assert fetched.returncode == 0, fetched.stderr
    v1_file = tmp_path / f"{job_id}-v1.png"
    v1_bytes = v1_file.read_bytes()

    for n, strength in ((2, "0.5"), (3, "0.6")):
        rerun = cli(
            local_cluster, tmp_path, "rerun", job_id, "--from", "refine",
            "--set", f"strength={strength}", "--out", str(tmp_path),
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert (tmp_path / f"{job_id}-v{n}.png").exists()
    assert v1_file.read_bytes() == v1_bytes  # v1 untouched

    with SyncStageflowClient(local_cluster.orchestrator_address) as client:
        versions = client.versions(job_id)
    v3 = versions[2]
    text, made = read_recipe((tmp_path / f"{job_id}-v3.png").read_bytes())
    assert text.startswith(v3.prompt + "\n") and f"Seed: {v3.seed}," in text
    assert f"Model: {v3.stages[0].model.name}" in text
    assert f"Model hash: {v3.stages[0].model.fingerprint[:10]}" in text
    assert made["version"] == 3 and made["rerun_from"] == "refine"
    assert [s["reused"] for s in made["stages"]] == [True, False, False]
    assert made["stages"][1]["parameters"]["strength"] == pytest.approx(0.6)

    for fmt, ext in (("webp", "webp"), ("jpeg", "jpg")):
        out = tmp_path / f"v2.{ext}"
        got = cli(
            local_cluster,
            tmp_path,
            "fetch",
            job_id,
            "--version",
            "2",
            "--format",
            fmt,
            "--out",
            str(out),
        )
        assert got.returncode == 0, got.stderr
        with Image.open(out) as image:
            assert image.format == fmt.upper()
        text, made = read_recipe(out.read_bytes())
        assert made["version"] == 2 and f"Seed: {versions[1].seed}," in text
    base = cli(local_cluster, tmp_path, "fetch", job_id, "--stage", "base", "--version", "1")
    assert base.returncode == 0 and (tmp_path / f"{job_id}-v1-base.png").exists()

    bad = cli(local_cluster, tmp_path, "fetch", job_id, "--version", "9")
    assert bad.returncode == 2 and "version" in bad.stderr and "(has 1, 2, 3)" in bad.stderr

    compared = cli(local_cluster, tmp_path, "compare", job_id, "--versions", "1,3")
    assert compared.returncode == 0, compared.stderr
    sheet = tmp_path / f"{job_id}-compare-v1-v3.png"
    with Image.open(sheet) as image, Image.open(v1_file) as one:
        assert image.width > 2 * one.width and image.height > one.height

    listing = cli(local_cluster, tmp_path, "get", job_id)
    assert listing.returncode == 0, listing.stderr
    assert "v3 (from refine)" in listing.stdout and "reused" in listing.stdout
    as_json = json.loads(cli(local_cluster, tmp_path, "get", job_id, "--json").stdout)
    assert [v["version"] for v in as_json["versions"]] == [1, 2, 3]
    with Image.open(io.BytesIO(v1_bytes)) as image:
        image.load()
        assert image.info["parameters"].startswith(v1.prompt)
