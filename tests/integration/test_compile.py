"""compile=inductor on the tiny SD fixture: torch.compile's graphs against the
eager parts, and one compile per shape (inductor runs the C++ compiler, a
process: this tier, not tests/unit; the eager-only checks are in
tests/unit/inference/test_compile.py).

The models are capped at 64 px, so the warm-up (two guided UNet calls and a
decode at the served size) compiles the one shape the tests call: a UNet
batch of 2 over 8x8 latents and a decode of 1x4x8x8; the last test starts a
base stage process with the same settings, which finds those graphs in
inductor's on-disk cache. Measured here (2 shared cores, nice 19): 172 s for
the module with an empty inductor cache (148 s of it the first fixture's
compiles), 48 s with a warm one (/tmp/torchinductor_$USER by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from stageflow.inference.interface import StageInputs, Txt2ImgParams

if TYPE_CHECKING:
    from stageflow.inference.diffusion import Txt2ImgModel

PROMPT = "epic game hero portrait"
SIDE = 64
UNET_SHAPE = "unet 2x4x8x8 () 2x77x32"
DECODE_SHAPE = "vae_decoder 1x4x8x8"
# Inductor fuses kernels and reorders float32 sums. Measured on this fixture
# (one thread) when this was written: one UNet call differed from eager by at
# most 1.5e-6 (outputs up to ~1.5); the latents after 2 steps by 2.2e-5 and
# 2.8e-5 (seeds 3 and 0; values up to ~12, i.e. ~2e-6 of their range); the
# decoded image by at most one 8-bit level in under 0.01% of its values. The
# bounds leave ~5x. A graph gone wrong is far off: the UNet's output at t=999
# and at t=401 differs by 0.11 (a timestep baked in as a constant, the classic
# dynamic=False trap), at two samples by 1.3.
UNET_ATOL = 1e-5
LATENTS_ATOL = 1.5e-4


def _loaded(folder: Path, **options: Any) -> Iterator[Txt2ImgModel]:
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(folder, max_side=SIDE, **options)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="module")
def torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sd_folder(fixture_models: Path) -> Path:
    from stageflow.inference.fixtures import SD_FOLDER

    return fixture_models / SD_FOLDER


@pytest.fixture(scope="module")
def eager(sd_folder: Path, torch_one_thread: None) -> Iterator[Txt2ImgModel]:
    yield from _loaded(sd_folder)


@pytest.fixture(scope="module")
def compiled(sd_folder: Path, torch_one_thread: None) -> Iterator[Txt2ImgModel]:
    yield from _loaded(sd_folder, compile="inductor", warmup=True)


def run(model: Txt2ImgModel, **kwargs: Any) -> Any:
    params = Txt2ImgParams(
        **{"prompt": PROMPT, "steps": 4, "width": SIDE, "height": SIDE, "seed": 3, **kwargs}
    )
    return model.run_with_report(params, StageInputs(), lambda i, n: None, lambda: False)


def test_warm_up_compiles_the_served_shape_during_load(compiled: Txt2ImgModel) -> None:
    from stageflow.inference.compiled import compile_seconds

    seconds = compile_seconds(compiled.parts)
    assert sorted(seconds) == [UNET_SHAPE, DECODE_SHAPE]
    assert all(s > 0 for s in seconds.values())
    assert compiled.identity.compile == "inductor"


def test_a_call_at_a_compiled_shape_does_not_compile_again(compiled: Txt2ImgModel) -> None:
    from torch._dynamo.utils import counters

    from stageflow.inference.compiled import compile_seconds

    before = (dict(counters["stats"]), compile_seconds(compiled.parts))
    run(compiled)  # guided (2 rows), 64 px: the warm-up's shapes, 4 steps and a decode
    run(compiled, seed=4)
    assert (dict(counters["stats"]), compile_seconds(compiled.parts)) == before


def test_compiled_output_equals_eager_within_float_reordering(
    compiled: Txt2ImgModel, eager: Txt2ImgModel
) -> None:
    import torch

    parts, plain = compiled.parts, eager.parts
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(0)
        sample = torch.randn(2, 4, 8, 8, generator=gen)
        cond = plain.condition(PROMPT, "", True, (SIDE, SIDE))
        for t in (torch.tensor(999), torch.tensor(401)):
            got, want = parts.predict_noise(sample, t, cond), plain.predict_noise(sample, t, cond)
            torch.testing.assert_close(got, want, rtol=0, atol=UNET_ATOL)
    latents = run(compiled, denoising_end=0.5).latents.array
    reference = run(eager, denoising_end=0.5).latents.array
    np.testing.assert_allclose(latents, reference, rtol=0, atol=LATENTS_ATOL)
    image = np.asarray(run(compiled).image).astype(int)
    reference_image = np.asarray(run(eager).image).astype(int)
    assert np.abs(image - reference_image).max() <= 1
    assert np.mean(image != reference_image) < 0.01


def test_a_shape_torch_will_not_compile_is_reported_eager_not_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past torch's recompile limit a new shape runs eager: it must not be
    reported as compiled (here with the limit at 1, on a one-line function)."""
    import torch
    import torch._dynamo.config

    from stageflow.inference.compiled import CompiledPart, GraphOptions

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    part = CompiledPart("double", double, GraphOptions(compile="inductor"))
    with torch.inference_mode():
        for n in (3, 3, 5, 5):
            assert torch.equal(part(torch.ones(n)), torch.full((n,), 2.0))
    assert list(part.compile_seconds) == [((3,),)]
    assert part.eager_shapes == {((5,),)}


def test_a_stage_started_with_compile_compiles_during_start_and_reports_it(
    tmp_path: Path, fixture_models: Path
) -> None:
    """The real plumbing: --compile inductor --warmup on a base stage process.
    Its log has the served shape's compiles before SERVING; Describe and the
    result say compile inductor; a request at that shape compiles nothing more.
    (Last in this module: the graphs above are in inductor's on-disk cache.)"""
    import json

    import grpc

    from stageflow.cli.cluster import LocalCluster
    from stageflow.v1 import stage_pb2
    from stageflow.v1 import stage_pb2_grpc as stage_grpc

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "default.yaml").write_text("stages:\n  - stage: base\n")
    cluster = LocalCluster(
        state_dir=tmp_path / "state",
        models_dir=fixture_models,
        stages=("base",),
        stage_args={"base": ["--compile", "inductor", "--warmup", "--max-side", str(SIDE)]},
        orchestrator_args=["--pipelines-dir", str(tmp_path / "pipelines")],
    )
    cluster.start(timeout=400)  # a cold inductor cache compiles for minutes here

    def compiled_events() -> list[dict[str, Any]]:
        lines = cluster.log_path("base").read_text().splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in events if e.get("event") == "model.compiled"]

    try:
        at_start = compiled_events()
        assert sorted(f"{e['part']} {e['shape']}" for e in at_start) == [UNET_SHAPE, DECODE_SHAPE]
        with grpc.insecure_channel(cluster.addresses["base"]) as channel:
            stub = stage_grpc.StageServiceStub(channel)
            desc = stub.Describe(stage_pb2.DescribeRequest(), timeout=60)
            assert (desc.model.compile, desc.model.channels_last) == ("inductor", False)
            request = stage_pb2.RunRequest(
                txt2img=stage_pb2.Txt2ImgParams(prompt=PROMPT, steps=2, width=SIDE, height=SIDE)
            )
            events = list(stub.Run(request, timeout=120))
        results = [e.result for e in events if e.HasField("result")]
        assert [r.model.compile for r in results] == ["inductor"]
        assert compiled_events() == at_start
    finally:
        cluster.stop()
