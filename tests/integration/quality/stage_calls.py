"""Calling a stage of the trained cluster over gRPC, images in and out of the store."""

from __future__ import annotations

from PIL import Image

from stageflow.core.artifacts import get_artifact, put_artifact
from stageflow.core.storage import ObjectStore
from stageflow.serving.channels import client_channel
from stageflow.stage.images import decode_image, encode_png
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc

TIMEOUT = 120.0


async def run_stage(address: str, request: stage_pb2.RunRequest) -> stage_pb2.StageResult:
    async with client_channel(address) as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        events = [event async for event in stub.Run(request, timeout=TIMEOUT)]
    results = [e.result for e in events if e.HasField("result")]
    assert len(results) == 1, events
    return results[0]


def fetch(store: ObjectStore, result: stage_pb2.StageResult) -> Image.Image:
    data = get_artifact(store, result.output.key, result.output.sha256)
    return decode_image(data, field="output")


def upload(store: ObjectStore, image: Image.Image) -> common_pb2.ArtifactRef:
    artifact = put_artifact(store, encode_png(image))
    return common_pb2.ArtifactRef(
        key=artifact.key,
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        media_type=artifact.media_type,
    )


async def txt2img(
    address: str, store: ObjectStore, prompt: str, seed: int, side: int, steps: int, guidance: float
) -> Image.Image:
    request = stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(
            prompt=prompt, width=side, height=side, steps=steps, guidance_scale=guidance, seed=seed
        )
    )
    return fetch(store, await run_stage(address, request))


async def upscale(
    address: str, store: ObjectStore, image: Image.Image, mode: stage_pb2.UpscaleMode
) -> Image.Image:
    request = stage_pb2.RunRequest(
        image=upload(store, image), upscale=stage_pb2.UpscaleParams(mode=mode, tile_size=0)
    )
    return fetch(store, await run_stage(address, request))
