"""The stage cache key: stable for the same inputs, different when any input changes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from stageflow.core.errors import Unavailable
from stageflow.orchestrator.cache import StageCache, cache_key
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import common_pb2, stage_pb2
from tests.unit.orchestrator.fakes import FakeStore

MODEL = common_pb2.ModelInfo(name="tiny-sd", version="1", backend="torch", fingerprint="f" * 64)


def _run() -> stage_pb2.RunRequest:
    return stage_pb2.RunRequest(
        request_id="job-1.refine",
        job_id="job-1",
        output_prefix="artifacts",
        image=common_pb2.ArtifactRef(key="artifacts/a.png", sha256="a" * 64),
        refine=stage_pb2.RefineParams(prompt="hero", strength=0.3, steps=40, seed=42),
    )


def _model(**change: str) -> common_pb2.ModelInfo:
    model = common_pb2.ModelInfo()
    model.CopyFrom(MODEL)
    for name, value in change.items():
        setattr(model, name, value)
    return model


def test_the_key_is_stable_and_ignores_run_names() -> None:
    key = cache_key("refine", MODEL, _run())
    assert len(key) == 64 and key == cache_key("refine", MODEL, _run())
    renamed = _run()
    renamed.job_id, renamed.request_id, renamed.output_prefix = "job-2", "job-2.v2.refine", "x"
    renamed.image.key = "elsewhere/a.png"  # same bytes (digest), another key
    assert cache_key("refine", MODEL, renamed) == key


def _set_seed(run: stage_pb2.RunRequest) -> None:
    run.refine.seed = 43


def _set_guidance(run: stage_pb2.RunRequest) -> None:
    run.refine.guidance_scale = 7.5  # set vs unset is a different request


def _set_prompt(run: stage_pb2.RunRequest) -> None:
    run.refine.prompt = "hero!"


def _set_input(run: stage_pb2.RunRequest) -> None:
    run.image.sha256 = "b" * 64


def _set_mask(run: stage_pb2.RunRequest) -> None:
    run.mask.sha256 = "c" * 64


def _set_text(run: stage_pb2.RunRequest) -> None:
    run.refine.text = "Chapter Two"


def _set_cache_interval(run: stage_pb2.RunRequest) -> None:
    run.refine.cache_interval = 2  # step caching: other pixels


@pytest.mark.parametrize(
    "change",
    [_set_seed, _set_guidance, _set_prompt, _set_input, _set_mask, _set_text, _set_cache_interval],
)
def test_each_request_input_changes_the_key(change: Callable[[stage_pb2.RunRequest], None]) -> None:
    run = _run()
    change(run)
    assert cache_key("refine", MODEL, run) != cache_key("refine", MODEL, _run())


@pytest.mark.parametrize(
    "model",
    [
        _model(fingerprint="e" * 64),
        _model(version="2"),
        _model(backend="onnxruntime"),
        _model(name="x"),
    ],
)
def test_the_model_identity_changes_the_key(model: common_pb2.ModelInfo) -> None:
    assert cache_key("refine", model, _run()) != cache_key("refine", MODEL, _run())


def test_the_stage_changes_the_key_and_an_unknown_model_is_not_cached() -> None:
    assert cache_key("upscale", MODEL, _run()) != cache_key("refine", MODEL, _run())
    assert cache_key("refine", _model(fingerprint=""), _run()) == ""


async def test_a_hit_is_verified_against_the_store(jobs: JobStore) -> None:
    store = FakeStore()
    data = b"png bytes"
    ref = common_pb2.ArtifactRef(key="artifacts/x.png", sha256=hashlib.sha256(data).hexdigest())
    store.objects[ref.key] = data
    cache = StageCache(jobs, store)
    result = stage_pb2.StageResult(output=ref, model=MODEL)
    await cache.put("k1", "base", result)
    assert await cache.get("k1") == result
    assert await cache.get("k2") is None

    store.objects[ref.key] = b"tampered"
    assert await cache.get("k1") is None
    store.objects[ref.key] = data
    assert await cache.get("k1") is None  # a stale entry is dropped, not retried

    await cache.put("k1", "base", result)
    del store.objects[ref.key]
    assert await cache.get("k1") is None
    # Without a store the entry is trusted.
    await cache.put("k3", "base", result)
    assert await StageCache(jobs, None).get("k3") == result


async def test_an_unreadable_or_truncated_artifact_is_a_miss(jobs: JobStore) -> None:
    """The stage runs again rather than the job failing or trusting the entry."""
    data = b"png bytes"
    ref = common_pb2.ArtifactRef(
        key="artifacts/x.png", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )
    result = stage_pb2.StageResult(output=ref, model=MODEL)

    class Down(FakeStore):
        def get(self, key: str) -> bytes:
            raise Unavailable("object store unreachable")

    await StageCache(jobs, Down()).put("k1", "base", result)
    assert await StageCache(jobs, Down()).get("k1") is None
    store = FakeStore()
    store.objects[ref.key] = data[:4]
    cache = StageCache(jobs, store)
    await cache.put("k2", "base", result)
    assert await cache.get("k2") is None
