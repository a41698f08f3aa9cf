"""Every stage parameter, set out of range, is refused before any work with
INVALID_ARGUMENT naming the field; bad artifacts get a clear status; the stage
keeps serving."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.core.artifacts import Artifact, artifact_key, put_artifact
from stageflow.core.storage import ObjectStore
from stageflow.serving.channels import client_channel
from stageflow.stage.images import encode_png
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc

TIMEOUT = 60.0


def image_ref(store: ObjectStore, size: tuple[int, int] = (64, 64)) -> common_pb2.ArtifactRef:
    artifact = put_artifact(store, encode_png(Image.new("RGB", size, (200, 40, 40))))
    return ref(artifact)


def ref(artifact: Artifact) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(
        key=artifact.key, sha256=artifact.sha256, size_bytes=artifact.size_bytes
    )


async def call(address: str, request: stage_pb2.RunRequest) -> list[stage_pb2.RunResponse]:
    async with client_channel(address) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        return [event async for event in stub.Run(request, timeout=TIMEOUT)]


def txt2img(**fields: object) -> stage_pb2.RunRequest:
    params = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, **fields}
    return stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(**params))  # type: ignore[arg-type]


def refine(image: common_pb2.ArtifactRef | None, **fields: object) -> stage_pb2.RunRequest:
    params = {"prompt": "a red circle", "steps": 4, "strength": 0.5, **fields}
    return stage_pb2.RunRequest(
        image=image,
        refine=stage_pb2.RefineParams(**params),  # type: ignore[arg-type]
    )


def upscale(image: common_pb2.ArtifactRef | None, **fields: object) -> stage_pb2.RunRequest:
    return stage_pb2.RunRequest(image=image, upscale=stage_pb2.UpscaleParams(**fields))  # type: ignore[arg-type]


BAD_BASE = [
    ("prompt", {"prompt": "   "}),
    ("negative_prompt", {"negative_prompt": "x" * 5000}),
    ("width", {"width": 0}),
    ("width", {"width": 100}),  # not a multiple of the latent size multiple
    ("width", {"width": 4096}),
    ("height", {"height": -16}),
    ("steps", {"steps": 0}),
    ("steps", {"steps": 10_000}),
    ("guidance_scale", {"guidance_scale": 0.5}),
    ("guidance_scale", {"guidance_scale": 100.0}),
    ("seed", {"seed": -1}),
    ("cache_interval", {"cache_interval": 0}),
    ("cache_interval", {"cache_interval": 11}),
]
BAD_REFINE = [
    ("prompt", {"prompt": ""}),
    ("strength", {"strength": 0.0}),
    ("strength", {"strength": 1.5}),
    ("steps", {"steps": 0}),
    ("steps", {"steps": 500}),
    ("guidance_scale", {"guidance_scale": 31.0}),
    ("seed", {"seed": -5}),
    ("inpaint_mask_blur", {"inpaint_mask_blur": -1}),
    ("inpaint_mask_blur", {"inpaint_mask_blur": 1000}),
    ("cache_interval", {"cache_interval": 0}),
    ("cache_interval", {"cache_interval": 11}),
    ("mode", {"mode": 9}),
    (
        "mask_box",
        {
            "mode": stage_pb2.REFINE_MODE_INPAINT,
            "mask_box": stage_pb2.Box(left=0.8, top=0, right=0.2, bottom=1),
        },
    ),
]
BAD_UPSCALE = [
    ("tile_size", {"tile_size": -1}),
    ("tile_size", {"tile_size": 5000}),
    ("tile_overlap", {"tile_overlap": -2}),
    ("tile_overlap", {"tile_overlap": 1000}),
    ("mode", {"mode": 5}),
]


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    names = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            names += [v.field for v in bad.field_violations]
    return names


async def assert_invalid(address: str, request: stage_pb2.RunRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert (info.value.details() or "").startswith(field), info.value.details()
    assert field_violations(info.value) == [field]


@pytest.mark.parametrize(("field", "fields"), BAD_BASE, ids=[f"{f}={v}" for f, v in BAD_BASE])
async def test_base_rejects_each_bad_parameter_and_keeps_serving(
    local_cluster: LocalCluster, field: str, fields: dict[str, object]
) -> None:
    address = local_cluster.addresses["base"]
    await assert_invalid(address, txt2img(**fields), field)
    events = await call(address, txt2img())
    assert events[-1].HasField("result")


@pytest.mark.parametrize(("field", "fields"), BAD_REFINE, ids=[f"{f}={v}" for f, v in BAD_REFINE])
async def test_refine_rejects_each_bad_parameter_and_keeps_serving(
    local_cluster: LocalCluster, local_store: ObjectStore, field: str, fields: dict[str, object]
) -> None:
    address = local_cluster.addresses["refine"]
    image = image_ref(local_store)
    await assert_invalid(address, refine(image, **fields), field)
    events = await call(address, refine(image))
    assert events[-1].HasField("result")


@pytest.mark.parametrize(("field", "fields"), BAD_UPSCALE, ids=[f"{f}={v}" for f, v in BAD_UPSCALE])
async def test_upscale_rejects_each_bad_parameter_and_keeps_serving(
    local_cluster: LocalCluster, local_store: ObjectStore, field: str, fields: dict[str, object]
) -> None:
    address = local_cluster.addresses["upscale"]
    image = image_ref(local_store, (16, 16))
    await assert_invalid(address, upscale(image, **fields), field)
    events = await call(address, upscale(image))
    assert events[-1].result.width == 64


async def test_a_stage_refuses_the_params_of_another_kind(local_cluster: LocalCluster) -> None:
    await assert_invalid(local_cluster.addresses["upscale"], txt2img(), "params")


async def test_input_image_checks(local_cluster: LocalCluster, local_store: ObjectStore) -> None:
    refine_address = local_cluster.addresses["refine"]
    # an input whose sides are not a multiple of the latent size multiple
    await assert_invalid(refine_address, refine(image_ref(local_store, (50, 64))), "image")
    # inpainting with neither a mask nor a mask box
    inpaint = refine(image_ref(local_store), mode=stage_pb2.REFINE_MODE_INPAINT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(refine_address, inpaint)
    assert info.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "mask" in (info.value.details() or "")
    # a refine or upscale call without its input image
    for address, request in (
        (refine_address, refine(None)),
        (local_cluster.addresses["upscale"], upscale(None)),
    ):
        await assert_invalid(address, request, "image")  # a missing field, not a precondition


async def test_missing_artifact_is_not_found(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    missing = common_pb2.ArtifactRef(
        key=artifact_key("artifacts", "ab" * 32, "png"), sha256="ab" * 32
    )
    for stage, request in (("refine", refine(missing)), ("upscale", upscale(missing))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(local_cluster.addresses[stage], request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.key in (info.value.details() or "")


async def test_corrupted_artifact_is_data_loss_and_the_stage_stays_healthy(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    good = image_ref(local_store, (32, 32))
    # The object at a content address is overwritten with other bytes.
    corrupt_png = encode_png(Image.new("RGB", (32, 32), (0, 0, 255)))
    key = artifact_key("corrupt", good.sha256, "png")
    local_store.put(key, corrupt_png)
    corrupted = common_pb2.ArtifactRef(key=key, sha256=good.sha256)
    # ... or the reference names the wrong digest.
    wrong_digest = common_pb2.ArtifactRef(key=good.key, sha256="0" * 64)
    # ... or the bytes are not an image at all.
    junk = ref(put_artifact(local_store, b"not a png"))

    address = local_cluster.addresses["upscale"]
    for bad in (corrupted, wrong_digest):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(address, upscale(bad))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert "sha256 mismatch" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, upscale(junk))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "image" in (info.value.details() or "")

    events = await call(address, upscale(good))
    out = events[-1].result
    assert (out.width, out.height) == (128, 128)
    decoded = Image.open(io.BytesIO(local_store.get(out.output.key)))
    assert decoded.size == (128, 128)


async def test_an_oversize_input_or_a_bomb_is_refused_from_its_header(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    """Its sides are read from the header, never decoded: INVALID_ARGUMENT
    naming the field and the range the stage's Describe publishes."""
    from tests.unit.stage.test_image_headers import png_bomb, png_header

    address = local_cluster.addresses["upscale"]
    async with client_channel(address) as channel:
        desc = await stage_pb2_grpc.StageServiceStub(channel).Describe(stage_pb2.DescribeRequest())
    allowed = f"[{desc.min_side}, {desc.max_side}] pixels"
    for data in (png_header(9000, 9000), png_bomb(20000, 20000)):
        bad = ref(put_artifact(local_store, data))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(address, upscale(bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(info.value) == ["image"]
        assert allowed in (info.value.details() or ""), info.value.details()
    events = await call(address, upscale(image_ref(local_store, (16, 16))))
    assert events[-1].result.width == 64  # and it keeps serving


async def test_error_messages_carry_no_python_repr_and_no_server_path(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    missing = common_pb2.ArtifactRef(
        key=artifact_key("artifacts", "cd" * 32, "png"), sha256="cd" * 32
    )
    junk = ref(put_artifact(local_store, b"\x89PNG but not really"))
    seed = refine(image_ref(local_store), seed=-1)
    for stage, request in (
        ("upscale", upscale(missing)),
        ("upscale", upscale(junk)),
        ("refine", seed),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(local_cluster.addresses[stage], request)
        details = info.value.details() or ""
        assert "0x" not in details and " object at " not in details, details
        assert str(local_cluster.state_dir) not in details, details
    assert "[0, 9223372036854775807]" in details  # the seed range, in full


async def test_the_requests_output_prefix_is_honoured_inside_the_store(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    request = upscale(image_ref(local_store, (16, 16)))
    request.output_prefix = "team-a/outputs"
    events = await call(local_cluster.addresses["upscale"], request)
    key = events[-1].result.output.key
    assert key.startswith("team-a/outputs/sha256/")
    assert local_store.exists(key)
    request.output_prefix = "../outside"
    await assert_invalid(local_cluster.addresses["upscale"], request, "output_prefix")


def test_an_invalid_bucket_name_stops_a_stage_with_one_line_and_status_2(
    local_cluster: LocalCluster,
) -> None:
    stage = subprocess.run(
        [
            sys.executable, "-m", "stageflow.services.upscale",
            "--store-url", "s3://Not_A_Bucket?endpoint=http://127.0.0.1:9",
            "--model-path", str(local_cluster.model_path("upscale")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert stage.returncode == 2, stage.stderr
    assert "Traceback" not in stage.stderr
    errors = [line for line in stage.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Not_A_Bucket" in errors[0], stage.stderr
