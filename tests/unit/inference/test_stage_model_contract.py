"""One contract, every model family: what a stage servicer relies on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stageflow.core.errors import Cancelled, FailedPrecondition, InvalidArgument
from stageflow.inference.base import LocalModel
from stageflow.inference.interface import (
    RefineParams,
    StageInputs,
    StageParams,
    Txt2ImgParams,
    UpscaleParams,
    param_ranges,
)
from stageflow.inference.registry import create_model, families


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@dataclass(frozen=True)
class Case:
    """A small valid request for one family and what it must produce."""

    family: str
    folder: str
    params: StageParams
    inputs: StageInputs
    out_size: tuple[int, int]
    steps: int


CASES = {
    "sd-txt2img": Case(
        "sd-txt2img",
        "tiny-sd",
        Txt2ImgParams(prompt="epic game hero portrait", width=64, height=48, steps=3),
        StageInputs(),
        (64, 48),
        3,
    ),
    "sd-refine": Case(
        "sd-refine",
        "tiny-sd",
        RefineParams(prompt="moody cinematic", steps=8, strength=0.5),
        StageInputs(image=noise_image(48, 64)),
        (48, 64),
        4,
    ),
    "esrgan": Case(
        "esrgan",
        "tiny-esrgan-x4",
        UpscaleParams(tile_size=24, tile_overlap=4),
        StageInputs(image=noise_image(40, 30)),
        (160, 120),
        4,  # ceil(40/24) * ceil(30/24) tiles
    ),
}


def test_every_registered_family_has_a_contract_case() -> None:
    assert sorted(CASES) == families()


@pytest.fixture(scope="module", params=sorted(CASES))
def loaded(request: pytest.FixtureRequest, fixture_models: dict[str, Path]) -> Any:
    case = CASES[request.param]
    model = create_model(case.family, fixture_models[case.folder])
    model.load()
    yield case, model
    model.unload()


def record() -> tuple[list[tuple[int, int]], Any]:
    calls: list[tuple[int, int]] = []
    return calls, lambda i, n: calls.append((i, n))


def test_describe(loaded: Any) -> None:
    case, model = loaded
    desc = model.describe()
    assert desc.kind == model.kind
    assert desc.identity.name == case.folder
    assert desc.identity.backend == "torch"
    assert len(desc.identity.fingerprint) == 64
    assert desc.param_ranges == param_ranges(type(case.params))
    assert 1 <= desc.min_side <= desc.max_side


def out_of_range(lo: float, hi: float) -> list[float]:
    step = 1 if isinstance(lo, int) and isinstance(hi, int) else 0.5
    return [lo - step, hi + step]


def test_validate_rejects_each_numeric_field_out_of_range(loaded: Any) -> None:
    case, model = loaded
    model.validate(case.params)
    ranges = param_ranges(type(case.params))
    assert ranges
    for name, (lo, hi) in ranges.items():
        for bad in out_of_range(lo, hi):
            params = dataclasses.replace(case.params, **{name: bad})
            with pytest.raises(InvalidArgument) as err:
                model.validate(params)
            assert err.value.field == name
            # Integers in full (a seed's bound is no 9.22337e+18), others as %g.
            shown = [str(v) if isinstance(v, int) else f"{v:g}" for v in (lo, hi)]
            assert f"[{shown[0]}, {shown[1]}]" in err.value.message


def test_validate_rejects_another_stages_params(loaded: Any) -> None:
    case, model = loaded
    other = next(c.params for c in CASES.values() if type(c.params) is not type(case.params))
    with pytest.raises(InvalidArgument) as err:
        model.validate(other)
    assert err.value.field == "params"


def test_run_produces_image_and_reports_each_step(loaded: Any) -> None:
    case, model = loaded
    calls, progress = record()
    image = model.run(case.params, case.inputs, progress, lambda: False)
    assert image.mode == "RGB"
    assert image.size == case.out_size
    assert calls == [(i, case.steps) for i in range(1, case.steps + 1)]


def test_cancel_stops_within_one_step(loaded: Any) -> None:
    case, model = loaded
    calls, progress = record()
    with pytest.raises(Cancelled, match=f"of {case.steps}"):
        model.run(case.params, case.inputs, progress, lambda: len(calls) >= 1)
    assert len(calls) == 1


def test_cancel_before_start_does_no_step(loaded: Any) -> None:
    case, model = loaded
    calls, progress = record()
    with pytest.raises(Cancelled):
        model.run(case.params, case.inputs, progress, lambda: True)
    assert calls == []


def test_same_request_gives_identical_bytes(loaded: Any) -> None:
    case, model = loaded
    first = model.run(case.params, case.inputs, lambda i, n: None, lambda: False)
    second = model.run(case.params, case.inputs, lambda i, n: None, lambda: False)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("family", sorted(CASES))
def test_unload_releases_the_model(family: str, fixture_models: dict[str, Path]) -> None:
    case = CASES[family]
    model = create_model(family, fixture_models[case.folder])
    assert isinstance(model, LocalModel) and not model.loaded
    with pytest.raises(FailedPrecondition):
        model.describe()
    model.load()
    assert model.loaded
    model.unload()
    assert not model.loaded
    with pytest.raises(FailedPrecondition):
        model.describe()


@pytest.mark.parametrize("family", sorted(CASES))
def test_name_version_and_max_side_are_configurable(
    family: str, fixture_models: dict[str, Path]
) -> None:
    case = CASES[family]
    model = create_model(
        family, fixture_models[case.folder], name="custom", version="7", max_side=32
    )
    model.load()
    desc = model.describe()
    assert (desc.identity.name, desc.identity.version, desc.max_side) == ("custom", "7", 32)
    # Every case's image is larger than 32 px on some side.
    with pytest.raises(InvalidArgument):
        model.validate(case.params)
        model.validate_inputs(case.params, case.inputs)
    model.unload()


def test_fingerprint_changes_with_any_file(tmp_path: Path, fixture_models: dict[str, Path]) -> None:
    folder = tmp_path / "esrgan"
    folder.mkdir()
    for f in fixture_models["tiny-esrgan-x4"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    model = create_model("esrgan", folder)
    model.load()
    before = model.describe().identity.fingerprint
    (folder / "README.md").write_text("notes")
    model.load()
    assert model.describe().identity.fingerprint != before
