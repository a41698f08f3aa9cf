"""`stageflow demo` as a newcomer runs it: starts the services, runs the
reference example through all three stages, writes a PNG, stops everything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_demo_writes_the_final_png_and_stops_its_processes(tmp_path: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stageflow.cli",
            "demo",
            "--out",
            str(out),
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        # Real-ESRGAN x4plus (128 -> 512 px) and the typography pass at 512 px: about
        # two minutes on 2 cores, more on a loaded machine.
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    match = re.search(r"final image: (\S+\.png)", done.stdout)
    assert match, done.stdout
    png = Path(match[1]) if Path(match[1]).is_absolute() else REPO / match[1]
    assert png.parent == out
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (512, 512)
    # The upscale is Real-ESRGAN's released x4plus, from the repository `make setup` fills.
    assert re.search(r"^\s*upscale\s+succeeded\s+realesrgan-x4plus/1/torch", done.stdout, re.M)
    for stage in ("base", "refine", "upscale"):
        assert re.search(rf"^\s*{stage}\s+succeeded", done.stdout, re.MULTILINE), done.stdout
    # Every process it started has exited: no port file is left behind.
    assert not list((state / "ports").glob("*"))
