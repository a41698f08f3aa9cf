"""What a module does NOT import, each checked in a fresh interpreter (a process
of its own: the test session has long imported everything).

Moved from the unit tier, which starts no processes (tests/unit/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stageflow.inference.fixtures import ESRGAN_FOLDER, SD_FOLDER
from stageflow.inference.onnx.export import ExportReport, export_onnx


def test_model_registry_does_not_pull_torch() -> None:
    code = "import sys, stageflow.inference.registry; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scheduler_does_not_import_diffusers() -> None:
    code = (
        "import sys, torch; from stageflow.inference.scheduler import DDIMScheduler, DDIMConfig;"
        "s = DDIMScheduler(DDIMConfig()); s.set_timesteps(3);"
        "assert 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def sd_export(fixture_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_onnx(fixture_models / SD_FOLDER, tmp_path_factory.mktemp("onnx") / "tiny-sd")


@pytest.fixture(scope="module")
def esrgan_export(fixture_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_onnx(
        fixture_models / ESRGAN_FOLDER, tmp_path_factory.mktemp("onnx") / "tiny-esrgan"
    )


NO_DIFFUSERS = """
import sys
from pathlib import Path
from PIL import Image
from stageflow.inference.registry import create_model
from stageflow.inference.interface import RefineParams, StageInputs, Txt2ImgParams, UpscaleParams
sd, esrgan = Path(sys.argv[1]), Path(sys.argv[2])
base = create_model("sd-txt2img", sd, backend="onnxruntime", torch_threads=1)
base.load()
image = base.run(Txt2ImgParams(prompt="hero", steps=2, width=32, height=32),
                 StageInputs(), lambda i, n: None, lambda: False)
refine = create_model("sd-refine", sd, backend="onnxruntime", torch_threads=1)
refine.load()
image = refine.run(RefineParams(prompt="hero", steps=2, strength=0.5),
                   StageInputs(image=image), lambda i, n: None, lambda: False)
up = create_model("esrgan", esrgan, backend="onnxruntime", torch_threads=1)
up.load()
image = up.run(UpscaleParams(), StageInputs(image=image), lambda i, n: None, lambda: False)
assert image.size == (128, 128), image.size
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "diffusers")
assert not loaded, loaded
print("ok")
"""


def test_onnx_stages_never_import_diffusers(
    sd_export: ExportReport, esrgan_export: ExportReport
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_DIFFUSERS, str(sd_export.folder), str(esrgan_export.folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
