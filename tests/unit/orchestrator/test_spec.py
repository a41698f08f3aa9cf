"""Pipeline specs: the shipped files, errors naming file and field, defaults, model checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.settings import PIPELINES_DIR
from stageflow.orchestrator.spec import SpecError, load_specs, parse_spec, with_defaults
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage, FakeStore

S = orchestrator_pb2


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_shipped_specs_load_with_their_orders_and_hashes() -> None:
    specs = load_specs(PIPELINES_DIR)
    assert specs["default"].order == ("base", "refine", "upscale")
    assert specs["text-after-upscale"].order == ("base", "upscale", "refine")
    assert len(specs["default"].sha256) == 64
    assert specs["default"].sha256 != specs["text-after-upscale"].sha256


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("stages:\n  - stage: base\n    defaults: {stepz: 3}\n", "stages.0.base.defaults.stepz"),
        ("stages:\n  - stage: base\n    defaults: {steps: 0}\n", "stages.0.base.defaults.steps"),
        ("stages:\n  - stage: base\n  - stage: blur\n", "stages.1"),
        ("stages:\n  - stage: refine\n", "must start with base"),
        ("stages:\n  - stage: base\n    model: 'a b'\n", "stages.0.base.model"),
        ("stages: [\n", "not valid YAML"),
        ("name: other\nstages:\n  - stage: base\n", "must match the file name"),
    ],
)
def test_an_invalid_spec_names_the_file_and_the_field(
    tmp_path: Path, text: str, names: str
) -> None:
    path = _write(tmp_path, "bad", text)
    with pytest.raises(SpecError) as err:
        parse_spec(path)
    assert str(path) in str(err.value)
    assert names in str(err.value)


def test_a_folder_without_a_default_spec_fails_fast(tmp_path: Path) -> None:
    _write(tmp_path, "other", "stages:\n  - stage: base\n")
    with pytest.raises(SpecError, match=r"no default\.yaml"):
        load_specs(tmp_path)


def test_spec_defaults_replace_built_ins_and_job_options_win(tmp_path: Path) -> None:
    spec = parse_spec(
        _write(
            tmp_path,
            "default",
            "stages:\n  - stage: base\n    defaults: {steps: 7, guidance_scale: 3}\n"
            "  - stage: upscale\n    defaults: {mode: lanczos}\n",
        )
    )
    request = S.SubmitJobRequest(base=S.BaseOptions(steps=9))
    effective = with_defaults(request, spec)
    assert effective.base.steps == 9  # the job's own option
    assert effective.base.guidance_scale == 3.0  # the spec's default
    assert effective.upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
    assert not request.base.HasField("guidance_scale")  # the submitted request is untouched


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    yield store
    await store.close()


def _request(**kwargs: object) -> S.SubmitJobRequest:
    return S.SubmitJobRequest(
        bundle=S.PromptBundle(base="hero", style="moody"),
        seed=1,
        width=64,
        height=64,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_runner_uses_the_named_spec_and_records_its_hash(
    tmp_path: Path, jobs: SqliteJobStore
) -> None:
    specs = load_specs(PIPELINES_DIR)
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    runner = JobRunner(fakes, jobs, FakeSettings(), FakeStore(), specs=specs)
    try:
        with pytest.raises(InvalidArgument) as err:
            await runner.submit(_request(pipeline="nope"))
        assert err.value.field == "pipeline"
        assert "text-after-upscale" in err.value.message

        job = await runner.submit(_request(pipeline="text-after-upscale"))
        assert [r.stage for r in job.stages] == ["base", "upscale", "refine"]
        assert job.pipeline == "text-after-upscale"
        assert job.pipeline_sha256 == specs["text-after-upscale"].sha256
        # Explicit stages win over the spec's order.
        job = await runner.submit(_request(stages=["base", "refine"]))
        assert [r.stage for r in job.stages] == ["base", "refine"]
        assert job.pipeline == "default"
    finally:
        await runner.close()


async def test_a_spec_naming_another_model_is_refused_at_submit(
    tmp_path: Path, jobs: SqliteJobStore
) -> None:
    _write(tmp_path, "default", "stages:\n  - stage: base\n    model: tiny-sd@2\n")
    desc = stage_pb2.DescribeResponse(model=common_pb2.ModelInfo(name="tiny-sd", version="1"))
    fakes = {"base": FakeStage("base", describe=desc)}
    runner = JobRunner(fakes, jobs, FakeSettings(), specs=load_specs(tmp_path))
    try:
        with pytest.raises(FailedPrecondition, match=r"tiny-sd@2.*serves tiny-sd@1"):
            await runner.submit(_request())
        assert fakes["base"].calls == []
    finally:
        await runner.close()


def test_the_orchestrator_refuses_to_start_on_a_bad_spec(tmp_path: Path) -> None:
    from stageflow.orchestrator.__main__ import main

    _write(tmp_path, "default", "stages:\n  - stage: base\n    defaults: {steps: -1}\n")
    with pytest.raises(SystemExit) as err:
        main(["--pipelines-dir", str(tmp_path), "--db-path", str(tmp_path / "db.sqlite")])
    message = str(err.value.code)
    assert str(tmp_path / "default.yaml") in message
    assert "stages.0.base.defaults.steps" in message
    assert not (tmp_path / "db.sqlite").exists()  # failed before anything started


async def test_the_default_spec_runs_the_typography_pass_after_the_upscale_with_text(
    jobs: SqliteJobStore,
) -> None:
    specs = load_specs(PIPELINES_DIR)
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    runner = JobRunner(fakes, jobs, FakeSettings(), FakeStore(), specs=specs)
    try:
        plain = await runner.submit(_request())
        assert [r.stage for r in plain.stages] == ["base", "refine", "upscale"]
        text = _request()
        text.bundle.overlay_text = "Chapter One"
        job = await runner.submit(text)
        # Where the text is 4x larger: legible to draw and to read back.
        assert [r.stage for r in job.stages] == ["base", "upscale", "refine"]
        assert job.pipeline == "default"
        text.stages[:] = ["base", "refine", "upscale"]  # a job's own order still wins
        job = await runner.submit(text)
        assert [r.stage for r in job.stages] == ["base", "refine", "upscale"]
    finally:
        await runner.close()


@pytest.mark.parametrize(
    ("order", "needle"),
    [("[base, upscale]", "each once"), ("[refine, base, upscale]", "text_order")],
)
def test_a_bad_text_order_names_the_field(tmp_path: Path, order: str, needle: str) -> None:
    path = _write(
        tmp_path,
        "default",
        f"stages:\n  - stage: base\n  - stage: refine\n  - stage: upscale\ntext_order: {order}\n",
    )
    with pytest.raises(SpecError, match="text_order") as err:
        parse_spec(path)
    assert needle in str(err.value)
