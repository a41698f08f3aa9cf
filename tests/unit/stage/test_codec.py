"""Proto ↔ params translation: presence decides defaults, values pass through."""

import dataclasses

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.inference.interface import (
    Box,
    ModelDescription,
    ModelIdentity,
    RefineMode,
    RefineParams,
    Txt2ImgParams,
    UpscaleMode,
)
from stageflow.stage import codec as stage_codec
from stageflow.v1 import stage_pb2


def test_unset_optional_fields_take_the_dataclass_defaults() -> None:
    request = stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="a red circle"))
    assert stage_codec.params_from_request(request) == Txt2ImgParams(prompt="a red circle")


def test_explicit_zero_is_passed_through_for_validation_not_replaced() -> None:
    request = stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="x", steps=0, seed=0))
    params = stage_codec.params_from_request(request)
    assert isinstance(params, Txt2ImgParams)
    assert params.steps == 0 and params.seed == 0


def test_reference_refinement_config_maps_field_for_field() -> None:
    msg = stage_pb2.RefineParams(
        prompt="p",
        mode=stage_pb2.REFINE_MODE_INPAINT,
        steps=40,
        guidance_scale=7.5,
        seed=42,
        inpaint_mask_blur=4,
        mask_box=stage_pb2.Box(left=0, top=0.75, right=1, bottom=1),
    )
    params = stage_codec.params_from_request(stage_pb2.RunRequest(refine=msg))
    assert params == RefineParams(
        prompt="p",
        mode=RefineMode.INPAINT,
        steps=40,
        guidance_scale=7.5,
        seed=42,
        inpaint_mask_blur=4,
        mask_box=Box(0, 0.75, 1, 1),
    )


def test_unspecified_modes_mean_the_documented_defaults() -> None:
    refine = stage_codec.params_from_request(
        stage_pb2.RunRequest(refine=stage_pb2.RefineParams(prompt="p"))
    )
    upscale = stage_codec.params_from_request(
        stage_pb2.RunRequest(upscale=stage_pb2.UpscaleParams())
    )
    assert isinstance(refine, RefineParams) and refine.mode is RefineMode.IMG2IMG
    assert refine.mask_box is None
    assert upscale.mode is UpscaleMode.LEARNED  # type: ignore[union-attr]


def test_missing_params_names_the_oneof() -> None:
    with pytest.raises(InvalidArgument) as info:
        stage_codec.params_from_request(stage_pb2.RunRequest())
    assert info.value.field == "params"


def test_unknown_enum_value_is_rejected_with_the_field() -> None:
    msg = stage_pb2.UpscaleParams()
    msg.mode = 7  # type: ignore[assignment]
    with pytest.raises(InvalidArgument) as info:
        stage_codec.params_from_request(stage_pb2.RunRequest(upscale=msg))
    assert info.value.field == "mode"


def test_the_models_defaults_fill_unset_fields_but_never_override_set_ones() -> None:
    defaults = {"steps": 30, "guidance_scale": 5.0}
    unset = stage_codec.params_from_request(
        stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="x")), defaults
    )
    explicit = stage_codec.params_from_request(
        stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="x", steps=4)), defaults
    )
    assert isinstance(unset, Txt2ImgParams) and isinstance(explicit, Txt2ImgParams)
    assert (unset.steps, unset.guidance_scale, unset.width) == (30, 5.0, 128)
    assert isinstance(unset.steps, int)
    assert (explicit.steps, explicit.guidance_scale) == (4, 5.0)


def test_describe_lists_what_an_unset_field_takes_model_yaml_first() -> None:
    identity = ModelIdentity("m", "1", "torch", "f" * 64)
    desc = ModelDescription(
        kind="txt2img",
        identity=identity,
        min_side=16,
        max_side=256,
        size_multiple=16,
        param_ranges={},
        param_defaults={"width": 64, "height": 64},
    )
    reply = stage_codec.describe_response(desc, ready=True, max_concurrency=1, max_queue=1)
    assert (reply.defaults["width"], reply.defaults["steps"]) == (64, 20)  # model.yaml, class
    refine = stage_codec.describe_response(
        dataclasses.replace(desc, kind="refine", param_defaults={}),
        ready=True,
        max_concurrency=1,
        max_queue=1,
    )
    assert refine.defaults["steps"] == 40
    assert "strength" not in refine.defaults  # by mode, decided per call


def test_describe_and_model_info_carry_the_dtype_choice_and_the_cpu() -> None:
    identity = ModelIdentity(
        "m",
        "1",
        "torch",
        "f" * 64,
        dtype="bf16",
        dtype_setting="auto",
        dtype_reason="auto: bf16, the CPU has avx512_bf16 (...)",
        cpu_features=("avx512f", "avx512_bf16"),
        cpu_capability="AVX512",
    )
    info = stage_codec.model_info(identity)
    assert (info.dtype, info.dtype_setting, info.dtype_reason) == (
        "bf16",
        "auto",
        "auto: bf16, the CPU has avx512_bf16 (...)",
    )
    desc = ModelDescription("txt2img", identity, 16, 256, 16, {})
    reply = stage_codec.describe_response(desc, ready=True, max_concurrency=1, max_queue=1)
    assert reply.model == info
    assert (list(reply.cpu_features), reply.cpu_capability) == (
        ["avx512f", "avx512_bf16"],
        "AVX512",
    )


def test_model_info_carries_the_compile_setting_through_the_wire() -> None:
    from stageflow.v1 import common_pb2

    compiled = ModelIdentity("m", "1", "torch", "f" * 64, compile="inductor", channels_last=True)
    wire = common_pb2.ModelInfo.FromString(stage_codec.model_info(compiled).SerializeToString())
    assert (wire.compile, wire.channels_last) == ("inductor", True)
    eager = stage_codec.model_info(dataclasses.replace(compiled, compile="off"))
    assert (eager.compile, eager.channels_last) == ("off", True)


def test_cache_interval_passes_through_and_unset_takes_the_default() -> None:
    def decoded(interval: int | None = None) -> tuple[int, int]:
        base_msg = stage_pb2.Txt2ImgParams(prompt="x")
        refine_msg = stage_pb2.RefineParams(prompt="x")
        if interval is not None:
            base_msg.cache_interval = refine_msg.cache_interval = interval
        base = stage_codec.params_from_request(stage_pb2.RunRequest(txt2img=base_msg))
        refine = stage_codec.params_from_request(stage_pb2.RunRequest(refine=refine_msg))
        assert isinstance(base, Txt2ImgParams) and isinstance(refine, RefineParams)
        return base.cache_interval, refine.cache_interval

    assert decoded() == (1, 1)  # off
    assert decoded(3) == (3, 3)
    assert decoded(0) == (0, 0)  # passed on for the model to refuse
    model_yaml = stage_codec.params_from_request(
        stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(prompt="x")), {"cache_interval": 2}
    )
    assert isinstance(model_yaml, Txt2ImgParams) and model_yaml.cache_interval == 2
