"""The workspace's own pages: New image, the gallery, live progress, thumbnails.

Each route makes the `StageflowClient` calls the JSON API makes for the same
thing (`client.submit_request`, `client.list_page`, `client.watch` through
`events.job_events`, `client.cancel`, `client.download`), with the sign-in
cookie's key.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from typing import Annotated

from fastapi import Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile

from stageflow.client import StageflowClientError, Unauthenticated
from stageflow.client.recipe import select_version
from stageflow.core import limits
from stageflow.gateway.errors import GatewayError, from_exception
from stageflow.gateway.events import job_events, parse_event_id
from stageflow.gateway.jobs import INT32_MAX, STATES
from stageflow.gateway.uploads import gateway_settings, read_upload
from stageflow.gateway.workspace import form
from stageflow.gateway.workspace.render import render, workspace_router
from stageflow.gateway.workspace.session import Session
from stageflow.v1 import common_pb2
from stageflow.v1 import orchestrator_pb2 as pb

router = workspace_router()

GALLERY_PAGE = 24
RECENT = 6
THUMB_PX = 256
# Inputs an error may name besides form.FIELDS; any other field is shown atop the form.
FORM_INPUTS = {*form.FIELDS, "pipeline", "stages", "input_image"}


async def _new_form(
    client: Session,
    request: Request,
    values: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
) -> Response:
    pipelines, recent = await asyncio.gather(client.pipelines(), client.list(RECENT))
    context = {
        "nav": "new",
        "pipelines": pipelines,
        "recent": recent,
        "values": values,
        "errors": errors,
        "prompt_fields": form.PROMPT_FIELDS,
        "stage_fields": [
            (stage, legend, form.STAGE_FIELDS[stage]) for stage, legend in form.STAGE_OPTIONS
        ],
        "upload_stages": list(form.UPLOAD_STAGES),
        # the fold of stage options opens when one of them has an error
        "stage_error": any(name.split(".")[0] in form.STAGE_FIELDS for name in errors),
    }
    return render(request, "new.html", context, status)


@router.get("/", summary="New image")
async def home(client: Session, request: Request) -> Response:
    # A fresh seed per visit: the dice in the page draws another.
    return await _new_form(client, request, {"seed": str(secrets.randbelow(2**31))}, {})


@router.post("/jobs", summary="Submit the New image form")
async def submit(client: Session, request: Request) -> Response:
    data = await request.form()
    values = {k: v for k, v in data.items() if isinstance(v, str)}
    upload = data.get("input_image")
    has_image = isinstance(upload, UploadFile) and bool(upload.filename)
    if not has_image:
        values.pop("stages", None)  # what an upload is used for: no upload, no such choice
    try:
        request_message = form.submit_request(values)
        if isinstance(upload, UploadFile) and has_image:
            image = await read_upload(upload, gateway_settings(request), "input_image")
            request_message.input_image = (await client.upload(image)).upload_id
        job = await client.submit_request(request_message)
    except (GatewayError, StageflowClientError) as err:
        if isinstance(err, Unauthenticated):
            raise
        return await _form_error(client, request, values, err)
    return RedirectResponse(f"/jobs/{job.job_id}", status_code=303)


async def _form_error(
    client: Session, request: Request, values: dict[str, str], err: Exception
) -> Response:
    """The form again, with its values, the error beside the input it names
    (atop the form when it names none of them), with the error's HTTP status."""
    status, _, message, field = from_exception(err)
    # The API's messages start with the field path too: "width: must be ...".
    if field and message.startswith(f"{field}: "):
        message = message.removeprefix(f"{field}: ")
    key = field if field in FORM_INPUTS else "_form"
    return await _new_form(client, request, values, {key: message}, status)


@router.get("/gallery", summary="The tenant's jobs, newest first")
async def gallery(
    client: Session,
    request: Request,
    state: str = "",
    q: str = "",
    page: Annotated[str, Query(max_length=256)] = "",
    n: Annotated[int, Query(ge=1, le=100, description="jobs a page")] = GALLERY_PAGE,
) -> Response:
    errors: dict[str, str] = {}
    state = state.strip().lower()
    if state and state not in STATES:
        errors["state"] = f"unknown job state {state!r}: one of {', '.join(STATES)}"
    if len(q) > limits.MAX_QUERY_CHARS:
        errors["q"] = f"must be at most {limits.MAX_QUERY_CHARS} characters, got {len(q)}"
    listed = pb.ListJobsResponse()
    if not errors:
        try:
            listed = await client.list_page(n, state or None, page, q)
        except StageflowClientError as err:
            if isinstance(err, Unauthenticated):
                raise
            errors[err.field if err.field in ("state", "query") else "page"] = err.message
    context = {
        "nav": "gallery",
        "jobs": listed.jobs,
        "next_page": listed.next_page_token,
        "state": state,
        "q": q,
        "page": page,
        "size": n,
        "default_size": GALLERY_PAGE,
        "states": [s for s in STATES if s != "unspecified"],
        "errors": {("q" if k == "query" else k): v for k, v in errors.items()},
    }
    return render(request, "gallery.html", context, 400 if errors else 200)


@router.get("/jobs/{job_id}/progress", summary="A job's progress (the fragment)")
async def progress(client: Session, request: Request, job_id: str) -> Response:
    job = await client.get(job_id)
    return render(request, "_progress.html", {"job": job})


@router.get("/jobs/{job_id}/events", summary="A job's events (SSE) for the page")
async def events(client: Session, request: Request, job_id: str) -> Response:
    await client.get(job_id)  # unknown or another tenant's: the not-found page now
    return StreamingResponse(
        job_events(client, job_id, parse_event_id(request.headers.get("last-event-id"))),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job from the page")
async def cancel(client: Session, request: Request, job_id: str) -> Response:
    job = await client.cancel(job_id)
    if request.headers.get("hx-request"):
        return render(request, "_progress.html", {"job": job})
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _artifact(job: pb.Job, stage: str) -> common_pb2.ArtifactRef:
    if stage == "final":
        ref = job.final
    else:
        runs = {run.stage: run for run in job.stages}
        if stage not in runs:
            raise GatewayError(
                "NOT_FOUND", f"stage: job {job.job_id} has no stage {stage!r}", "stage"
            )
        ref = runs[stage].output
    if not ref.key:
        raise GatewayError(
            "FAILED_PRECONDITION", f"{stage}: job {job.job_id} has no image there yet", "stage"
        )
    return ref


def make_thumb(data: bytes, px: int = THUMB_PX) -> bytes:
    """A WebP of at most px x px (never enlarged; the page scales it up, pixelated)."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((px, px), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.convert("RGB").save(out, "WEBP", quality=85, method=4)
    return out.getvalue()


@router.get("/thumbs/{job_id}/{version}/{stage}.webp", summary="A thumbnail of a stage's output")
async def thumb(
    client: Session,
    request: Request,
    job_id: str,
    version: Annotated[int, Path(ge=1, le=INT32_MAX)],
    stage: str,
) -> Response:
    job = select_version(await client.versions(job_id), version)
    ref = _artifact(job, stage)
    # An artifact never changes: its sha256 names the thumbnail for good.
    etag = f'"thumb{THUMB_PX}-{ref.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    data = await client.download(job_id, version=version, stage="" if stage == "final" else stage)
    body = await asyncio.to_thread(make_thumb, data)
    return Response(body, media_type="image/webp", headers=headers)
