"""The base stage draws what the prompt says, on combinations it never saw in
training; and the same gate fails when a pipeline part is wired wrong.

The working pipeline is checked over gRPC against the real base stage
process. The broken ones run in-process on the model layer (Txt2ImgModel
with one `DiffusionParts` field replaced), which is where such a bug lives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import ObjectStore
from stageflow.inference.diffusion import Txt2ImgModel
from stageflow.inference.training import analysis, data
from stageflow.orchestrator.bundle import compose_prompt
from stageflow.v1 import orchestrator_pb2
from tests.integration.quality import shared, stage_calls

# SD 1.5's constant: the classic mistake of not reading the folder's own.
SD15_SCALING_FACTOR = 0.18215


async def test_base_stage_obeys_held_out_prompts_over_grpc(trained_base: shared.BaseStage) -> None:
    """The same gate in fp32 and bf16: no looser rate for bf16."""
    images: dict[tuple[str, int], Image.Image] = {}
    for combo in data.HELD_OUT:
        caption = data.caption(*combo)
        for seed in shared.HELD_OUT_SEEDS:
            images[caption, seed] = await stage_calls.txt2img(
                trained_base.address,
                trained_base.store,
                caption,
                seed,
                shared.SIDE,
                shared.STEPS,
                shared.GUIDANCE,
            )
    result = shared.adherence(lambda prompt, seed: images[prompt, seed])
    assert result.rate >= shared.GATE, result.failures


async def test_composed_bundle_prompt_is_obeyed_too(
    trained_cluster: LocalCluster, trained_store: ObjectStore
) -> None:
    """The orchestrator appends style and overlay clauses; the subject must survive."""
    address = trained_cluster.addresses["base"]
    base = "a red circle on a blue background"
    bundle = orchestrator_pb2.PromptBundle(
        base=base, style="moody cinematic", overlay_text="Chapter One"
    )
    prompt = compose_prompt(bundle)
    image = await stage_calls.txt2img(
        address, trained_store, prompt, 42, shared.SIDE, shared.STEPS, shared.GUIDANCE
    )
    assert analysis.score(image, base), analysis.read(image)


@pytest.fixture
def broken(trained_txt2img: Txt2ImgModel) -> Iterator[Any]:
    """Replace fields of the loaded model's parts for one test, then restore them."""
    original = trained_txt2img.parts

    def apply(**changes: Any) -> Txt2ImgModel:
        trained_txt2img._parts = dataclasses.replace(original, **changes)
        return trained_txt2img

    yield apply
    trained_txt2img._parts = original


def _held_out_adherence(model: Txt2ImgModel, **kwargs: Any) -> shared.Adherence:
    return shared.adherence(
        lambda prompt, seed: shared.run_in_process(model, prompt, seed), seeds=(0,), **kwargs
    )


def test_the_in_process_model_passes_the_gate(gate_txt2img: Txt2ImgModel) -> None:
    # The control for the broken cases below: same seeds, nothing replaced (fp32 and bf16).
    result = _held_out_adherence(gate_txt2img)
    assert result.rate >= shared.GATE, result.failures


def test_gate_fails_with_a_wrong_vae_scaling_factor(broken: Any) -> None:
    model = broken(scaling_factor=SD15_SCALING_FACTOR)
    assert _held_out_adherence(model).rate < shared.GATE


def test_gate_fails_with_zero_text_embeddings(broken: Any, trained_txt2img: Txt2ImgModel) -> None:
    from stageflow.inference.sd_parts import text_conditioner

    parts = trained_txt2img.parts
    zeros = lambda ids: torch.zeros_like(parts.encode_text(ids))  # noqa: E731
    model = broken(encode_text=zeros, condition=text_conditioner(parts.tokenize, zeros))
    assert _held_out_adherence(model).rate < shared.GATE


def test_gate_fails_with_shuffled_prompts(trained_txt2img: Txt2ImgModel) -> None:
    # Each image is generated from the next combination's caption.
    captions = [data.caption(*combo) for combo in data.HELD_OUT]
    shifted = dict(zip(captions, captions[1:] + captions[:1], strict=True))
    result = _held_out_adherence(trained_txt2img, prompt_of=shifted.__getitem__)
    assert result.rate < shared.GATE
