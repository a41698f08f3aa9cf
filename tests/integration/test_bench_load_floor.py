"""bench/realscale.py's load floor: the libraries alone loading a folder in a
fresh process, the figure a torch stage's start is compared with."""

from __future__ import annotations

from pathlib import Path

from bench.realscale import load_floor
from stageflow.inference.fixtures import SD_FOLDER


def test_the_load_floor_loads_a_real_folder_in_a_fresh_process(fixture_models: Path) -> None:
    floor = load_floor(fixture_models / SD_FOLDER, threads=1)
    assert floor["ready_s"] >= floor["imports_s"] + floor["load_s"] > 0
