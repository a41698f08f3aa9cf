"""The OpenAI-compatible Images API: existing clients work by changing `base_url`.

`POST /v1/images/generations` submits `n` jobs (seeds seed, seed+1, ...) of
the pipeline named by `model`, waits for them, and answers OpenAI's
``{"created", "data": [{"b64_json"} | {"url"}]}``. `size` "WxH" is the job's
base size (the final image is larger when the pipeline upscales). `seed`,
`style`, `text` and `negative_prompt` are accepted as extra body fields.
`POST /v1/images/edits` (multipart: `image`, optional `mask`, `prompt`)
uploads the image (checked as every upload) and runs the refine stage on it,
inpainting the mask's transparent box when there is a mask; without a prompt,
and with `model` a pipeline that upscales, it runs the upscale stage alone.
`GET /v1/models` lists the pipelines. Errors come in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the HTTP status of
the one gRPC table (`errors.HTTP_STATUS`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Request, UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from stageflow.client import StageflowClient
from stageflow.gateway.errors import GatewayError
from stageflow.gateway.jobs import Client
from stageflow.gateway.uploads import gateway_settings, read_upload
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_N = 4
# SubmitJobRequest.seed is an int64, and image i uses seed + i.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1 - MAX_N
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGeneration(BaseModel):
    """OpenAI's images.generate body, plus stageflow's extras."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What to draw (the bundle's base).")
    model: str = Field("default", description="A pipeline name (GET /v1/models).")
    n: int = Field(1, ge=1, le=MAX_N, description=f"Images, 1 to {MAX_N}: one job each.")
    size: str | None = Field(
        None, description="WxH of the job's base image; unset: the base model's default."
    )
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int = Field(
        42, ge=SEED_MIN, le=SEED_MAX, description="Seed of the first image; image i uses seed + i."
    )
    style: str = ""
    text: str = Field("", description="Overlay text (the typography pass).")
    negative_prompt: str = ""
    quality: str | None = Field(None, description="Accepted and ignored (OpenAI's).")
    user: str | None = Field(None, description="Accepted and ignored (OpenAI's).")


def _size(size: str) -> tuple[int, int]:
    match = _SIZE.match(size)
    if match is None:
        raise GatewayError(
            "INVALID_ARGUMENT", f"size: must be WxH, e.g. 64x64, got {size!r}", "size"
        )
    return int(match.group(1)), int(match.group(2))


async def _run(client: StageflowClient, request: pb.SubmitJobRequest) -> pb.Job:
    return await _wait(client, await client.submit_request(request))


@router.post("/images/generations", summary="Create images (OpenAI images.generate)")
async def generations(
    client: Client, request: Request, body: Annotated[ImageGeneration, Body()]
) -> dict[str, Any]:
    width, height = _size(body.size) if body.size is not None else (None, None)
    submits = [
        pb.SubmitJobRequest(
            bundle=pb.PromptBundle(
                base=body.prompt,
                style=body.style,
                overlay_text=body.text,
                negative_prompt=body.negative_prompt,
            ),
            seed=body.seed + i,
            width=width,
            height=height,
            pipeline="" if body.model == "default" else body.model,
        )
        for i in range(body.n)
    ]
    # The first one alone: a bad request fails once, before n jobs are started.
    first = await client.submit_request(submits[0])
    jobs = await asyncio.gather(_wait(client, first), *(_run(client, s) for s in submits[1:]))
    return await _answer(client, request, list(jobs), body.response_format)


async def _answer(
    client: StageflowClient, request: Request, jobs: list[pb.Job], response_format: str
) -> dict[str, Any]:
    data = []
    for job in jobs:
        if response_format == "url":
            data.append({"url": str(request.url_for("final_image", job_id=job.job_id, version=1))})
        else:
            png = await client.fetch_final(job)
            data.append({"b64_json": base64.b64encode(png).decode()})
    return {"created": int(time.time()), "data": data}


def mask_box(mask: bytes, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """OpenAI's mask (transparent where to edit) as the refine stage's box:
    the bounding box of its fully transparent pixels, in fractions."""
    with Image.open(io.BytesIO(mask)) as img:
        if img.size != size:
            raise GatewayError(
                "INVALID_ARGUMENT",
                f"mask: must be the image's size {size[0]}x{size[1]}, got {img.width}x{img.height}",
                "mask",
            )
        if "A" not in img.getbands() and "transparency" not in img.info:
            raise GatewayError(
                "INVALID_ARGUMENT", "mask: must have an alpha channel (transparent = edit)", "mask"
            )
        alpha = img.convert("RGBA").getchannel("A")
        bbox = alpha.point(lambda a: 255 if a == 0 else 0).getbbox()
    if bbox is None:
        raise GatewayError("INVALID_ARGUMENT", "mask: has no fully transparent pixel", "mask")
    w, h = size
    return bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h


@router.post("/images/edits", summary="Edit an image (OpenAI images.edit)")
async def edits(
    client: Client,
    request: Request,
    image: Annotated[UploadFile | None, File(description="PNG, JPEG or WebP to edit.")] = None,
    images: Annotated[
        list[UploadFile] | None, File(alias="image[]", description="As `image` (one).")
    ] = None,
    mask: Annotated[
        UploadFile | None, File(description="PNG, transparent where to repaint.")
    ] = None,
    prompt: Annotated[str, Form(description="What to make of it; none: upscale only.")] = "",
    model: Annotated[str, Form(description="A pipeline name (GET /v1/models).")] = "default",
    n: Annotated[int, Form(ge=1, le=MAX_N)] = 1,
    size: Annotated[str | None, Form(description="Accepted; the image's own size is used.")] = None,
    response_format: Annotated[Literal["b64_json", "url"], Form()] = "b64_json",
    seed: Annotated[int, Form(ge=SEED_MIN, le=SEED_MAX)] = 42,
    style: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    negative_prompt: Annotated[str, Form()] = "",
) -> dict[str, Any]:
    files = [f for f in [image, *(images or [])] if f is not None]
    if len(files) != 1:
        raise GatewayError("INVALID_ARGUMENT", "image: give exactly one image", "image")
    settings = gateway_settings(request)
    data = await read_upload(files[0], settings, "image")
    submit = pb.SubmitJobRequest(
        bundle=pb.PromptBundle(
            base=prompt, style=style, overlay_text=text, negative_prompt=negative_prompt
        ),
        pipeline="" if model == "default" else model,
    )
    if prompt.strip():
        submit.stages.append("refine")
        if mask is not None:
            with Image.open(io.BytesIO(data)) as img:
                image_size = img.size
            mask_bytes = await read_upload(mask, settings, "mask")
            submit.refine.mode = stage_pb2.REFINE_MODE_INPAINT
            box = submit.refine.mask_box
            box.left, box.top, box.right, box.bottom = mask_box(mask_bytes, image_size)
    else:
        if mask is not None:
            raise GatewayError(
                "INVALID_ARGUMENT", "mask: needs a prompt (an upscale has none)", "mask"
            )
        pipelines = {p.name: p for p in await client.pipelines()}
        spec = pipelines.get(model)
        if spec is None or "upscale" not in spec.stages:
            raise GatewayError(
                "INVALID_ARGUMENT",
                f"prompt: must not be empty unless model is a pipeline with an upscale "
                f"stage (upscale only); {model!r} is not",
                "prompt",
            )
        submit.stages.append("upscale")
    submit.input_image = (await client.upload(data)).upload_id
    submits = []
    for i in range(n):
        one = pb.SubmitJobRequest()
        one.CopyFrom(submit)
        one.seed = seed + i
        submits.append(one)
    first = await client.submit_request(submits[0])
    jobs = await asyncio.gather(_wait(client, first), *(_run(client, s) for s in submits[1:]))
    return await _answer(client, request, list(jobs), response_format)


async def _wait(client: StageflowClient, job: pb.Job) -> pb.Job:
    finished = job
    async for event in client.watch(job.job_id):
        if event.WhichOneof("event") == "finished":
            finished = event.finished
    if finished.state != pb.JOB_STATE_SUCCEEDED:
        state = pb.JobState.Name(finished.state).removeprefix("JOB_STATE_")
        raise GatewayError("INTERNAL", f"job {job.job_id} {state.lower()}: {finished.error}")
    return finished


@router.get("/models", summary="The pipelines, as OpenAI models")
async def models(client: Client) -> dict[str, Any]:
    pipelines = await client.pipelines()
    return {
        "object": "list",
        "data": [
            {"id": p.name, "object": "model", "created": 0, "owned_by": "stageflow"}
            for p in pipelines
        ],
    }
