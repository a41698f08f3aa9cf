"""The stage-kind registry and what derives from it, with a kind added here.

`blur` has no proto message of its own: registering it is all it takes for
the pipeline spec, the request builder, the stage codec, the submit checks
and reruns to handle it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from stageflow import kinds
from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import RefineParams, bounded, params_type_of
from stageflow.orchestrator.bundle import build_run_request, input_scales, submit_field
from stageflow.orchestrator.rerun import apply_overrides
from stageflow.orchestrator.spec import SpecError, parse_spec, with_defaults
from stageflow.orchestrator.validation import check_request, check_stages
from stageflow.stage import codec
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2


@dataclass(frozen=True)
class BlurParams:
    radius: float = field(default=1.5, metadata=bounded(0.0, 10.0))
    passes: int = field(default=1, metadata=bounded(1, 4))
    mode: str = "gaussian"


BLUR = kinds.Kind(
    name="blur",
    params_type=f"{__name__}:BlurParams",
    options={"radius": float, "passes": int, "mode": str},
    limits={"radius": kinds.Limit(ge=0), "passes": kinds.Limit(ge=1)},
    output_scale=2,
)


@pytest.fixture
def blur() -> Iterator[kinds.Kind]:
    with kinds.registered(BLUR) as kind:
        yield kind


def struct(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def job(**fields: object) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(bundle=pb.PromptBundle(base="hero"), seed=4, **fields)  # type: ignore[arg-type]


# -- the built-ins ---------------------------------------------------------------


def test_the_built_in_kinds_and_what_they_declare() -> None:
    assert kinds.names()[:3] == ("base", "refine", "upscale") == kinds.default_pipeline()
    assert [kinds.params_field(k) for k in kinds.all_kinds()[:3]] == [
        "txt2img",
        "refine",
        "upscale",
    ]
    assert kinds.by_model_kind("txt2img").name == "base"
    assert [k.first for k in kinds.all_kinds()[:3]] == [True, False, False]
    assert input_scales(("base", "upscale", "refine")) == {"base": 1, "upscale": 1, "refine": 4}
    refine = kinds.options(kinds.get("refine"))
    assert refine["mode"].choices == ("img2img", "inpaint")
    assert refine["strength"].limit == kinds.Limit(gt=0, le=1)
    assert "mask_box" not in refine  # specs and --set take scalars


def test_the_codec_resolves_each_kinds_params_type() -> None:
    codec.install()
    assert params_type_of("refine") is RefineParams
    assert codec.params_type(kinds.get("refine")) is RefineParams


def test_a_kind_is_declared_once(blur: kinds.Kind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.Kind(name="blur", params_type="x:Y", model_kind="other"))
    with pytest.raises(ValueError, match="model kind 'txt2img'"):
        kinds.register(kinds.Kind(name="paint", params_type="x:Y", model_kind="txt2img"))
    with pytest.raises(ValueError, match="lowercase"):
        kinds.Kind(name="Blur!", params_type="x:Y")
    with pytest.raises(ValueError, match="SubmitJobRequest has no blur2 field"):
        kinds.Kind(name="blur2", params_type="x:Y", options=pb.BaseOptions)
    with pytest.raises(KeyError, match="known: base, refine, upscale, blur"):
        kinds.get("nope")


def test_stage_order_follows_the_kinds_inputs(blur: kinds.Kind) -> None:
    assert kinds.order_problem(["base", "blur", "refine"]) is None
    assert "must start with base" in (kinds.order_problem(["blur", "base"]) or "")
    check_stages(job(stages=["base", "blur"]))
    with pytest.raises(InvalidArgument, match="unknown stage 'sharpen'"):
        check_stages(job(stages=["base", "sharpen"]))


# -- a kind without messages, end to end in-process ---------------------------------


def test_a_spec_validates_the_new_kinds_defaults(blur: kinds.Kind, tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text("stages:\n  - stage: base\n  - stage: blur\n    defaults: {radius: 2}\n")
    spec = parse_spec(path)
    assert spec.order == ("base", "blur")
    assert spec.stage("blur").defaults_dict() == {"radius": 2.0}  # type: ignore[union-attr]
    for bad, where in [("{radius: -1}", "defaults.radius"), ("{radios: 1}", "defaults.radios")]:
        path.write_text(f"stages:\n  - stage: base\n  - stage: blur\n    defaults: {bad}\n")
        with pytest.raises(SpecError, match=f"stages.1.blur.{where}"):
            parse_spec(path)


def test_the_job_wins_over_the_spec_and_the_stage_gets_generic_params(
    blur: kinds.Kind, tmp_path: Path
) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(
        "stages:\n  - stage: base\n  - stage: blur\n    defaults: {radius: 2, passes: 2}\n"
    )
    request = job(options={"blur": struct(radius=4.0)})
    check_request(request)
    effective = with_defaults(request, parse_spec(path))
    run = build_run_request("blur", effective, job_id="j")
    assert run.WhichOneof("params") == "generic" and run.generic.kind == "blur"
    assert json_format.MessageToDict(run.generic.values) == {"radius": 4.0, "passes": 2.0}
    assert run.request_id == "j.blur"

    # The stage decodes it into the model's dataclass: model.yaml defaults, then the class's.
    params = codec.params_from_request(run, {"passes": 3, "radius": 0.5})
    assert params == BlurParams(radius=4.0, passes=2, mode="gaussian")
    empty = stage_pb2.RunRequest(generic=stage_pb2.GenericParams(kind="blur"))
    assert codec.params_from_request(empty, {"passes": 3}) == BlurParams(passes=3)
    assert codec.params_from_request(empty) == BlurParams()


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"radius": 1.0, "sigma": 2.0}, "sigma", "unknown parameter"),
        ({"passes": 1.5}, "passes", "whole number"),
        ({"mode": 3.0}, "mode", "must be a string"),
        ({"radius": "big"}, "radius", "must be a number"),
    ],
)
def test_bad_generic_params_name_the_field(
    blur: kinds.Kind, values: dict[str, object], field: str, message: str
) -> None:
    run = stage_pb2.RunRequest(
        generic=stage_pb2.GenericParams(kind="blur", values=struct(**values))
    )
    with pytest.raises(InvalidArgument, match=message) as err:
        codec.params_from_request(run)
    assert err.value.field == field


def test_an_unknown_generic_kind_is_refused(blur: kinds.Kind) -> None:
    run = stage_pb2.RunRequest(generic=stage_pb2.GenericParams(kind="nope"))
    with pytest.raises(InvalidArgument) as err:
        codec.params_from_request(run)
    assert err.value.field == "generic.kind"


def test_options_by_name_only_for_kinds_without_a_message(blur: kinds.Kind) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_request(job(options={"refine": struct(steps=3.0)}))
    assert err.value.field == "options.refine" and "set `refine`" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        check_request(job(options={"paint": struct()}))
    assert "unknown stage 'paint'" in err.value.message
    assert submit_field("blur", "radius", job()) == "options.blur.radius"


def test_a_rerun_merges_the_new_kinds_options_key_by_key(blur: kinds.Kind) -> None:
    previous = pb.Job(
        job_id="j",
        state=pb.JOB_STATE_SUCCEEDED,
        request=job(stages=["base", "blur"], options={"blur": struct(radius=4.0, passes=2.0)}),
        stages=[
            pb.StageRun(stage="base", state=pb.STAGE_STATE_SUCCEEDED),
            pb.StageRun(stage="blur", state=pb.STAGE_STATE_SUCCEEDED),
        ],
    )
    rerun = pb.RerunJobRequest(job_id="j", from_stage="blur", options={"blur": struct(radius=1.0)})
    merged = apply_overrides(previous, rerun).request.options["blur"]
    assert json_format.MessageToDict(merged) == {"radius": 1.0, "passes": 2.0}
    # A stage before from_stage is reused unchanged: its options are refused.
    previous.stages.append(pb.StageRun(stage="refine", state=pb.STAGE_STATE_SUCCEEDED))
    previous.request.stages.append("refine")
    early = pb.RerunJobRequest(job_id="j", from_stage="refine", options={"blur": struct()})
    with pytest.raises(InvalidArgument) as err:
        apply_overrides(previous, early)
    assert err.value.field == "options.blur"
    early = pb.RerunJobRequest(job_id="j", from_stage="blur", base=pb.BaseOptions(steps=2))
    with pytest.raises(InvalidArgument) as err:
        apply_overrides(previous, early)
    assert err.value.field == "base"


def test_the_load_tester_takes_the_new_kind(blur: kinds.Kind) -> None:
    from stageflow.cli.loadgen import InputRef, LoadConfig, load_kinds, parse_sets, stage_request

    assert "blur" in load_kinds()
    params = parse_sets("blur", ["radius=2.5", "passes=2"])
    assert params == {"radius": 2.5, "passes": 2}
    with pytest.raises(InvalidArgument, match="allowed: mode, passes, radius"):
        parse_sets("blur", ["sigma=1"])
    with pytest.raises(InvalidArgument, match="seeded input"):
        LoadConfig(address="x", kind="blur")  # it reads an image
    image = InputRef("in.png", "a" * 64, 3)
    run = stage_request(
        LoadConfig(address="x", kind="blur", params=params, image=image),
        seed=1,
        request_id="r",
        job_id="j",
    )
    assert run.generic.kind == "blur" and run.image.key == "in.png"
    assert codec.params_from_request(run) == BlurParams(radius=2.5, passes=2)
