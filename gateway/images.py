"""The OpenAI-compatible Images API: existing clients work by changing `base_url`.

`POST /v1/images/generations` submits `n` jobs (seeds seed, seed+1, ...) of
the pipeline named by `model`, waits for them, and answers OpenAI's
``{"created", "data": [{"b64_json"} | {"url"}]}``. `size` "WxH" is the job's
base size (the final image is larger when the pipeline upscales). `seed`,
`style`, `text` and `negative_prompt` are accepted as extra body fields.
`GET /v1/models` lists the pipelines. Errors come in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the HTTP status of
the one gRPC table (`errors.HTTP_STATUS`).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from stageflow.client import StageflowClient
from stageflow.gateway.errors import GatewayError
from stageflow.gateway.jobs import Client
from stageflow.v1 import orchestrator_pb2 as pb

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_N = 4
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGeneration(BaseModel):
    """OpenAI's images.generate body, plus stageflow's extras."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What to draw (the bundle's base).")
    model: str = Field("default", description="A pipeline name (GET /v1/models).")
    n: int = Field(1, ge=1, le=MAX_N, description=f"Images, 1 to {MAX_N}: one job each.")
    size: str = Field("64x64", description="WxH of the job's base image.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int = Field(42, description="Seed of the first image; image i uses seed + i.")
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
    width, height = _size(body.size)
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
    data = []
    for job in jobs:
        if body.response_format == "url":
            data.append({"url": str(request.url_for("final_image", job_id=job.job_id, version=1))})
        else:
            png = await client.fetch_final(job)
            data.append({"b64_json": base64.b64encode(png).decode()})
    return {"created": int(time.time()), "data": data}


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
