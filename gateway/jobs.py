"""/v1/jobs: the orchestrator's job API over HTTP/JSON.

Each route decodes, calls one `StageflowClient` method with the caller's key,
and encodes; the JSON bodies are the gRPC messages in proto3 JSON with the
proto's field names (SubmitJobRequest, RerunJobRequest, Job).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from stageflow.client import StageflowClient
from stageflow.client.recipe import select_version
from stageflow.core import limits
from stageflow.gateway.convert import from_json, to_json
from stageflow.gateway.errors import GatewayError
from stageflow.gateway.events import job_events, parse_event_id
from stageflow.gateway.images_io import MEDIA_TYPES, export, pick_format
from stageflow.v1 import orchestrator_pb2 as pb

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Protobuf int32 fields (a job version): larger values cannot be sent.
INT32_MAX = 2**31 - 1
STATES = {name.removeprefix("JOB_STATE_").lower(): value for name, value in pb.JobState.items()}


async def caller(request: Request) -> StageflowClient:
    """The app's client, sending the request's own Bearer key (if any) through
    (async: a sync dependency would cost every request a thread-pool hop)."""
    client: StageflowClient = request.app.state.client
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return client.with_api_key(key.strip() if scheme.lower() == "bearer" else "")


Client = Annotated[StageflowClient, Depends(caller)]
JSON_BODY = Body(
    description="A stageflow.v1 message in proto3 JSON (the proto's field names).",
    examples=[{"bundle": {"base": "a red circle on a blue background"}, "width": 64, "height": 64}],
)


@router.post("", status_code=201, summary="Submit a job (a SubmitJobRequest)")
async def submit(client: Client, body: Annotated[dict[str, Any], JSON_BODY]) -> dict[str, Any]:
    job = await client.submit_request(from_json(body, pb.SubmitJobRequest()))
    return {"job": to_json(job)}


@router.get("", summary="List the caller's jobs, newest first, a page at a time")
async def list_jobs(
    client: Client,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
    state: Annotated[str | None, Query(description="queued, running, succeeded, ...")] = None,
    page_token: Annotated[
        str, Query(max_length=128, description="next_page_token of the previous page")
    ] = "",
    q: Annotated[
        str,
        Query(
            max_length=limits.MAX_QUERY_CHARS,
            description="Only jobs whose prompt contains this text",
        ),
    ] = "",
) -> dict[str, Any]:
    if state is not None and state.lower() not in STATES:
        raise GatewayError("INVALID_ARGUMENT", f"state: unknown job state {state!r}", "state")
    page = await client.list_page(page_size, state.lower() if state else None, page_token, q)
    return {"jobs": [to_json(j) for j in page.jobs], "next_page_token": page.next_page_token}


@router.get("/{job_id}", summary="A job with all its versions", response_class=JSONResponse)
async def get_job(client: Client, job_id: str) -> JSONResponse:
    versions = await client.versions(job_id)
    # Already JSON-ready: a JSONResponse skips FastAPI's recursive re-encoding
    # (most of this route's cost under load).
    return JSONResponse({"job": to_json(versions[-1]), "versions": [to_json(v) for v in versions]})


@router.post("/{job_id}/cancel", summary="Cancel a job")
async def cancel(client: Client, job_id: str) -> dict[str, Any]:
    return {"job": to_json(await client.cancel(job_id))}


@router.post("/{job_id}/rerun", status_code=201, summary="Rerun from a stage (a RerunJobRequest)")
async def rerun(
    client: Client, job_id: str, body: Annotated[dict[str, Any], JSON_BODY]
) -> dict[str, Any]:
    request = from_json(body, pb.RerunJobRequest())
    request.job_id = job_id
    return {"job": to_json(await client.rerun_request(request))}


@router.get(
    "/{job_id}/events",
    summary="WatchJob as Server-Sent Events (resumable with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    client: Client,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    await client.get(job_id)  # unknown or another tenant's: a 404 now, not an event later
    return StreamingResponse(
        job_events(client, job_id, parse_event_id(last_event_id)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def export_image(
    client: StageflowClient,
    request: Request,
    job_id: str,
    version: int,
    stage: str,
    fmt: str | None,
) -> Response:
    """A version's final (stage "") or a stage's image in the chosen format, the
    recipe embedded; also the workspace's downloads."""
    chosen = pick_format(fmt, request.headers.get("accept"))
    versions, data = await asyncio.gather(
        client.versions(job_id), client.download(job_id, version=version, stage=stage)
    )
    job = select_version(versions, version)
    # The recipe is added here, at export: the stored artifact stays as it is,
    # and the ETag is that of the bytes sent.
    body = await asyncio.to_thread(export, data, chosen, job, stage)
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    # A version's artifacts never change: cache for good (private: behind a key).
    headers = {
        "ETag": etag,
        "Cache-Control": "private, max-age=31536000, immutable",
        "Vary": "Accept",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=MEDIA_TYPES[chosen], headers=headers)


IMAGE: dict[int | str, dict[str, Any]] = {200: {"content": {t: {} for t in MEDIA_TYPES.values()}}}


@router.get(
    "/{job_id}/versions/{version}/image", summary="A version's final image", responses=IMAGE
)
async def final_image(
    client: Client,
    request: Request,
    job_id: str,
    version: Annotated[
        int, Path(ge=1, le=INT32_MAX, description="1 for the submitted job, N+1 per rerun")
    ],
    format: Annotated[str | None, Query(description="png (default), webp or jpeg")] = None,
) -> Response:
    return await export_image(client, request, job_id, version, "", format)


@router.get(
    "/{job_id}/versions/{version}/stages/{stage}/image",
    summary="One stage's output of a version",
    responses=IMAGE,
)
async def stage_image(
    client: Client,
    request: Request,
    job_id: str,
    stage: str,
    version: Annotated[
        int, Path(ge=1, le=INT32_MAX, description="1 for the submitted job, N+1 per rerun")
    ],
    format: Annotated[str | None, Query(description="png (default), webp or jpeg")] = None,
) -> Response:
    return await export_image(client, request, job_id, version, stage, format)
