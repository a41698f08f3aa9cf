"""`stageflow models import / list / compile` against a local repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stageflow.cli.main import app


@pytest.fixture(scope="module")
def esrgan_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stageflow.inference.fixtures import ESRGAN_FOLDER, build_fixtures

    return build_fixtures(tmp_path_factory.mktemp("models"), seed=0)[ESRGAN_FOLDER]


def invoke(*args: str, repository: Path) -> Result:
    env = {"COLUMNS": "200", "STAGEFLOW_MODEL_REPOSITORY": str(repository)}
    return CliRunner().invoke(app, ["models", *args], env=env)


def test_import_then_list(esrgan_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = invoke("import", str(esrgan_folder), "--name", "up", "--version", "1", repository=repo)
    assert done.exit_code == 0, done.output
    assert "imported up@1: esrgan (rrdbnet-x4) for upscale" in done.stdout
    assert (repo / "up" / "1" / "model.yaml").is_file()
    listed = invoke("list", "--json", repository=repo)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["version"], row["kinds"], row["backend"]) == (
        "up",
        "1",
        ["upscale"],
        "torch",
    )
    table = invoke("list", repository=repo)
    assert "up@1" in table.stdout and "upscale" in table.stdout


def test_errors_are_one_line_and_an_exit_code(esrgan_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    invoke("import", str(esrgan_folder), "--name", "up", "--version", "1", repository=repo)
    again = invoke("import", str(esrgan_folder), "--name", "up", "--version", "1", repository=repo)
    assert again.exit_code == 1
    assert "FAILED_PRECONDITION: model up@1 already exists" in again.output
    missing = invoke("compile", "nope@1", repository=repo)
    assert missing.exit_code == 2 and "NOT_FOUND: model nope@1 not found" in missing.output
    bad = invoke("compile", "up@1", "--backend", "coreml", repository=repo)
    assert bad.exit_code == 2 and "INVALID_ARGUMENT: backend" in bad.output
    assert "Traceback" not in again.output + missing.output + bad.output


def test_build_fixtures_keeps_its_name_and_flags() -> None:
    result = CliRunner().invoke(app, ["models", "build-fixtures", "--help"])
    assert result.exit_code == 0
    assert "--out" in result.output and "--seed" in result.output


def test_import_with_a_variant_stores_it_in_the_repository(sd_folder: Path, tmp_path: Path) -> None:
    done = invoke(
        "import", str(sd_folder), "--name", "sd", "--version", "1", "--variant", "bf16",
        repository=tmp_path / "repo",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "casting its weights to bf16" in done.output
    assert list((tmp_path / "repo").rglob("diffusion_pytorch_model.bf16.safetensors"))
    assert not list(sd_folder.rglob("*.bf16.safetensors"))
    bad = invoke(
        "import", str(sd_folder), "--name", "sd", "--version", "2", "--variant", "int8",
        repository=tmp_path / "repo",
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "variant" in bad.output and "fp16 or bf16" in bad.output


def test_variant_writes_the_weights_cast_beside_a_diffusers_folders_own(
    sd_folder: Path, esrgan_folder: Path, tmp_path: Path
) -> None:
    import shutil

    folder = Path(shutil.copytree(sd_folder, tmp_path / "sd"))
    done = invoke("variant", str(folder), "--dtype", "bf16", repository=tmp_path / "repo")
    assert done.exit_code == 0, done.output
    assert "wrote 3 bf16 weight files" in done.stdout
    assert (folder / "unet" / "diffusion_pytorch_model.bf16.safetensors").is_file()
    # Not a diffusers folder, or a dtype that is no variant: one line, exit 2.
    upscaler = invoke("variant", str(esrgan_folder), repository=tmp_path / "repo")
    assert upscaler.exit_code == 2
    assert "not a diffusers folder (no model_index.json)" in upscaler.output
    fp32 = invoke("variant", str(folder), "--dtype", "fp32", repository=tmp_path / "repo")
    assert fp32.exit_code == 2
    assert "a variant is stored in fp16 or bf16" in fp32.output
