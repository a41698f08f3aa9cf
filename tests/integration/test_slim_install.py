"""A plain `pip install stageflow` in a fresh venv, as another service would do it.

The wheel is built from this checkout and installed with its base dependencies
only. From that venv, the README's Python client examples (read out of
README.md, so the README cannot rot) and the `stageflow submit`/`get` commands
run against a real cluster and download its artifacts through the
orchestrator; the model stack, the OpenTelemetry SDK and pydantic are not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster
from stageflow.client import SyncStageflowClient
from stageflow.client.recipe import read_recipe
from stageflow.core.image_meta import png_without_text
from stageflow.v1 import orchestrator_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CLIENT_SECTION = "## The Python client"
# What a slim install must not have: the model stack, the serving stack.
ABSENT = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "rapidocr",
    "numpy",
    "PIL",
    "opentelemetry.sdk",
    "pydantic",
    "structlog",
    "minio",
    "yaml",
)
# The whole slim site-packages (pip and setuptools excluded) stays below this;
# torch alone is several hundred MB.
MAX_SLIM_MB = 80


def readme_examples() -> list[str]:
    """The ```python blocks of the README's client section, in order."""
    text = README.read_text()
    start = text.index(CLIENT_SECTION)
    end = text.find("\n## ", start + len(CLIENT_SECTION))
    section = text[start : end if end > 0 else None]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tail(done: subprocess.CompletedProcess[str], lines: int = 25) -> str:
    return "\n".join((done.stdout + done.stderr).splitlines()[-lines:])


def copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore), links
    kept as links: the wheel is built from exactly the source, never from a
    stale build/ folder."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout, cannot list its files: {tail(listed)}")
    for name in filter(None, listed.stdout.split("\0")):
        source, target = REPO / name, dest / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree
        if source.is_dir() and not source.is_symlink():
            continue  # e.g. a nested repository or a link to a folder outside
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def site_packages(prefix: Path) -> Path:
    (found,) = prefix.glob("lib/python3*/site-packages")
    return found


def installed_mb(site: Path, exclude: Sequence[str] = ()) -> float:
    total = 0
    for path in site.rglob("*"):
        top = path.relative_to(site).parts[0]
        if path.is_file() and not path.is_symlink() and not top.startswith(tuple(exclude)):
            total += path.stat().st_size
    return total / 1e6


@dataclass(frozen=True)
class SlimVenv:
    prefix: Path
    env: dict[str, str]  # for its processes: nothing of this checkout or of the dev venv

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def stageflow(self) -> Path:
        return self.prefix / "bin" / "stageflow"


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlimVenv]:
    root = tmp_path_factory.mktemp("slim")
    source = copy_checkout(root / "src")
    wheels, deps = root / "wheel", root / "deps"
    # No build isolation: the build backend (setuptools) is the dev install's,
    # so the build itself needs no network.
    pip = [sys.executable, "-m", "pip"]
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, source])
    assert built.returncode == 0, f"pip wheel failed:\n{tail(built)}"
    (wheel,) = wheels.glob("stageflow-*.whl")
    # The base dependencies, as wheels: from the configured indexes or pip's cache.
    fetched = run([*pip, "download", "--dest", deps, wheel])
    if fetched.returncode != 0:
        pytest.skip(f"the slim install's dependencies cannot be obtained:\n{tail(fetched)}")

    prefix = root / "venv"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("STAGEFLOW_")
    }
    env.update(PYTHONNOUSERSITE="1", PATH=f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    created = run([sys.executable, "-m", "venv", prefix], env=env)
    assert created.returncode == 0, f"venv failed:\n{tail(created)}"
    venv = SlimVenv(prefix, env)
    installed = run(
        [venv.python, "-m", "pip", "install", "--no-index", "--find-links", deps, wheel],
        env=env,
        cwd=root,
    )
    assert installed.returncode == 0, f"the slim install failed:\n{tail(installed)}"
    slim_mb = installed_mb(site_packages(prefix), exclude=("pip", "setuptools", "_distutils"))
    full_mb = installed_mb(site_packages(Path(sys.prefix)))
    print(f"site-packages: slim install {slim_mb:.0f} MB, this full dev install {full_mb:.0f} MB")
    assert slim_mb < MAX_SLIM_MB, f"the slim install takes {slim_mb:.0f} MB"
    yield venv


def test_the_slim_install_has_no_model_or_serving_stack(slim: SlimVenv, tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib, json, sys\n"
        "import stageflow, stageflow.client, stageflow.cli.main\n"
        "present = []\n"
        f"for name in {ABSENT!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    present.append(name)\n"
        "print(json.dumps({'present': present, 'stageflow': stageflow.__file__}))\n"
    )
    done = run([slim.python, probe], env=slim.env, cwd=tmp_path)
    assert done.returncode == 0, tail(done)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["present"] == []
    # The wheel's code, not this checkout's.
    assert Path(report["stageflow"]).is_relative_to(slim.prefix), report["stageflow"]


def test_the_readme_examples_run_from_the_slim_install(
    slim: SlimVenv, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    examples = readme_examples()
    assert len(examples) == 2, "the README's client section has an async and a sync example"
    env = {**slim.env, "STAGEFLOW_ADDRESS": local_cluster.orchestrator_address}
    outputs = []
    for number, source in enumerate(examples, start=1):
        script = tmp_path / f"readme_example_{number}.py"
        script.write_text(source)
        done = run([slim.python, script], env=env, cwd=tmp_path)
        assert done.returncode == 0, f"README example {number} failed:\n{tail(done)}"
        outputs.append(done.stdout)

    # The async example: the job's events, then its final image written and verified.
    lines = outputs[0].splitlines()
    assert lines[0] == "snapshot" and "finished" in lines
    final = next(line.split() for line in lines if line.startswith("final "))
    job_id, sha256 = final[1], final[2]
    png = (tmp_path / "hero.png").read_bytes()
    # The stored PNG plus the recipe the download embeds.
    assert png.startswith(b"\x89PNG") and hashlib.sha256(png).hexdigest() != sha256
    assert hashlib.sha256(png_without_text(png)).hexdigest() == sha256
    assert read_recipe(png)[1]["job_id"] == job_id
    with SyncStageflowClient(local_cluster.orchestrator_address) as client:
        job = client.get(job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.final.sha256 == sha256
    assert f"base output {job.stages[0].output.size_bytes} bytes" in outputs[0]

    # The sync example: the errors, and version 1's base output of a job.
    assert "INVALID_ARGUMENT width - must be a multiple of" in outputs[1]
    assert "NOT_FOUND: job 'job-that-does-not-exist' not found" in outputs[1]
    base = (tmp_path / "base-v1.png").read_bytes()
    assert f"base of version 1: {len(base)} bytes" in outputs[1]
    assert base.startswith(b"\x89PNG")


def test_the_cli_client_commands_run_from_the_slim_install(
    slim: SlimVenv, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    address = ["--address", local_cluster.orchestrator_address]
    out = tmp_path / "out"
    bundle = ["--base", "a red circle on a blue background", "--style", "flat", "--seed", "5"]
    submitted = run(
        [slim.stageflow, "submit", *bundle, "--out", out, "--json", *address],
        env=slim.env,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, tail(submitted)
    printed = json.loads(submitted.stdout)
    job_id, final_path = printed["job"]["job_id"], Path(printed["final_path"])
    assert final_path == out / f"{job_id}.png"

    got = run([slim.stageflow, "get", job_id, "--json", *address], env=slim.env, cwd=tmp_path)
    assert got.returncode == 0, tail(got)
    job = json.loads(got.stdout)
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    # The written PNG is the stored one plus its recipe, embedded without Pillow.
    written = final_path.read_bytes()
    assert hashlib.sha256(written).hexdigest() != job["final"]["sha256"]
    parameters, made = read_recipe(written)
    assert f"Seed: {job['seed']}," in parameters and made["job_id"] == job_id

    fetched = run([slim.stageflow, "fetch", job_id, *address], env=slim.env, cwd=tmp_path)
    assert fetched.returncode == 0, tail(fetched)
    assert read_recipe((tmp_path / f"{job_id}-v1.png").read_bytes())[1]["version"] == 1
    webp = run(
        [slim.stageflow, "fetch", job_id, "--format", "webp", *address], env=slim.env, cwd=tmp_path
    )
    assert webp.returncode == 2
    assert "--format webp: needs Pillow" in webp.stderr and "stageflow[gateway]" in webp.stderr

    missing = run([slim.stageflow, "get", "job-nope", *address], env=slim.env, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("NOT_FOUND: job 'job-nope' not found")
    assert "Traceback" not in missing.stderr
