"""Latent hand-off in the orchestrator: spec checks at load, job checks at
submit, latents routed as the next stage's `latents` input, cache keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.bundle import LATENTS_MEDIA_TYPE, with_input
from stageflow.orchestrator.cache import cache_key
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.settings import PIPELINES_DIR
from stageflow.orchestrator.spec import SpecError, load_specs, parse_spec
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.orchestrator.validation import check_handoff
from stageflow.v1 import common_pb2, orchestrator_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage

S = orchestrator_pb2
HANDOFF = (
    "stages:\n"
    "  - stage: base\n    handoff: latent\n    defaults: {denoising_end: 0.8}\n"
    "  - stage: refine\n    defaults: {denoising_start: 0.8}\n"
    "  - stage: upscale\n"
)


def _write(folder: Path, text: str, name: str = "default") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_shipped_latent_handoff_spec_loads() -> None:
    spec = load_specs(PIPELINES_DIR)["latent-handoff"]
    base = spec.stage("base")
    assert base is not None and base.handoff == "latent"
    assert spec.order == ("base", "refine", "upscale")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # The next stage is not a diffusion stage: an upscaler reads images.
        (
            "stages:\n  - stage: base\n    handoff: latent\n    defaults: {denoising_end: 0.8}\n"
            "  - stage: upscale\n",
            "the next stage, upscale, reads images",
        ),
        (
            "stages:\n  - stage: base\n    handoff: latent\n  - stage: refine\n"
            "    defaults: {denoising_start: 0.8}\n",
            "needs defaults.denoising_end in (0, 1)",
        ),
        (
            "stages:\n  - stage: base\n    handoff: latent\n    defaults: {denoising_end: 0.8}\n"
            "  - stage: refine\n",
            "refine: defaults.denoising_start must be set",
        ),
        (
            "stages:\n  - stage: base\n    handoff: latent\n    defaults: {denoising_end: 0.8}\n",
            "no stage follows",
        ),
        (
            "stages:\n  - stage: base\n    defaults: {denoising_end: 0.8}\n  - stage: refine\n",
            "outputs latents; set handoff: latent",
        ),
        (
            "stages:\n  - stage: base\n  - stage: refine\n    defaults: {denoising_start: 0.5}\n",
            "the stage before it hands off an image",
        ),
        (
            "stages:\n  - stage: base\n  - stage: refine\n    handoff: latent\n"
            "  - stage: upscale\n",
            "refine makes no latents",
        ),
        # text_order would put the upscaler between the two.
        (HANDOFF + "text_order: [base, upscale, refine]\n", "text_order: base: handoff: latent"),
        (
            "stages:\n  - stage: base\n    defaults: {denoising_end: 1.5}\n",
            "stages.0.base.defaults.denoising_end",
        ),
    ],
)
def test_a_bad_handoff_is_refused_at_spec_load(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        parse_spec(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_latents_go_to_the_next_stage_as_its_latents_input() -> None:
    run = stage_pb2.RunRequest(refine=stage_pb2.RefineParams(prompt="x", denoising_start=0.8))
    latents = common_pb2.ArtifactRef(
        key="a/l.safetensors", sha256="1" * 64, media_type=LATENTS_MEDIA_TYPE
    )
    routed = with_input(run, latents)
    assert routed.latents == latents and not routed.HasField("image")
    image = common_pb2.ArtifactRef(key="a/i.png", sha256="2" * 64, media_type="image/png")
    assert with_input(run, image).image == image and not with_input(run, image).HasField("latents")


def test_the_cache_key_covers_the_latents() -> None:
    model = common_pb2.ModelInfo(name="m", version="1", backend="torch", fingerprint="f" * 64)
    run = stage_pb2.RunRequest(refine=stage_pb2.RefineParams(prompt="x", denoising_start=0.8))
    keys = {
        cache_key(
            "refine",
            model,
            with_input(run, common_pb2.ArtifactRef(sha256=d * 64, media_type=LATENTS_MEDIA_TYPE)),
        )
        for d in "ab"
    }
    assert len(keys) == 2
    # An image with the same digest is another input than latents.
    image = with_input(run, common_pb2.ArtifactRef(sha256="a" * 64, media_type="image/png"))
    assert cache_key("refine", model, image) not in keys


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    yield store
    await store.close()


def _describe(kind: str, space: str) -> stage_pb2.DescribeResponse:
    return stage_pb2.DescribeResponse(
        kind=kind,
        model=common_pb2.ModelInfo(name=kind, version="1"),
        min_side=8,
        max_side=1024,
        size_multiple=8,
        latent_space=space,
    )


def _request(**kwargs: object) -> S.SubmitJobRequest:
    return S.SubmitJobRequest(
        bundle=S.PromptBundle(base="hero"),
        seed=1,
        width=64,
        height=64,
        **kwargs,  # type: ignore[arg-type]
    )


async def _runner(
    tmp_path: Path, jobs: SqliteJobStore, base_space: str, refine_space: str
) -> JobRunner:
    _write(tmp_path, HANDOFF)
    fakes = {
        "base": FakeStage("base", describe=_describe("txt2img", base_space)),
        "refine": FakeStage("refine", describe=_describe("refine", refine_space)),
        "upscale": FakeStage("upscale", describe=_describe("upscale", "")),
    }
    return JobRunner(fakes, jobs, FakeSettings(), specs=load_specs(tmp_path))


async def test_submit_refuses_stages_of_different_latent_spaces(
    tmp_path: Path, jobs: SqliteJobStore
) -> None:
    runner = await _runner(tmp_path, jobs, "sd/4ch/8x/0.18215", "sdxl/4ch/8x/0.13025")
    try:
        with pytest.raises(
            FailedPrecondition, match=r"base makes sd/4ch/8x/0\.18215 latents, refine takes sdxl"
        ):
            await runner.submit(_request(validate_only=True))
    finally:
        await runner.close()


@pytest.mark.parametrize(
    ("stage", "options", "bad", "needle"),
    [
        ("base", S.BaseOptions, 0, ">= 1, got 0"),
        ("refine", S.RefineOptions, 11, "10, got 11"),
    ],
)
async def test_submit_checks_the_step_cache_range(
    tmp_path: Path,
    jobs: SqliteJobStore,
    stage: str,
    options: type[S.BaseOptions] | type[S.RefineOptions],
    bad: int,
    needle: str,
) -> None:
    space = "sd/4ch/8x/0.18215"
    runner = await _runner(tmp_path, jobs, space, space)
    try:
        with pytest.raises(InvalidArgument) as err:
            await runner.submit(
                _request(validate_only=True, **{stage: options(cache_interval=bad)})
            )
        assert err.value.field == f"{stage}.cache_interval", err.value.field
        assert needle in err.value.message, err.value.message
        ok = {stage: options(cache_interval=2)}
        assert (await runner.submit(_request(validate_only=True, **ok))).stages
    finally:
        await runner.close()


def test_a_job_from_an_upload_cannot_resume_latents() -> None:
    # Without a base there is nothing to resume from: the upload is an image.
    request = S.SubmitJobRequest(
        input_image="upload-1", refine=S.RefineOptions(denoising_start=0.8)
    )
    runs = {
        "refine": stage_pb2.RunRequest(refine=stage_pb2.RefineParams(denoising_start=0.8)),
        "upscale": stage_pb2.RunRequest(),
    }
    with pytest.raises(InvalidArgument) as err:
        check_handoff(("base", "refine", "upscale"), runs, {}, request)
    assert err.value.field == "refine.denoising_start", err.value.field
    assert "uploaded image" in err.value.message, err.value.message
    # The same job at denoising_start 0 reads the image: accepted.
    runs["refine"] = stage_pb2.RunRequest(refine=stage_pb2.RefineParams(denoising_start=0.0))
    check_handoff(("base", "refine", "upscale"), runs, {}, S.SubmitJobRequest(input_image="u"))
