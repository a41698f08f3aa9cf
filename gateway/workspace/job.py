"""/jobs/{id}: a job's page, every version as a column, and what it does.

- GET  /jobs/{id}                  the page: each version's stage outputs side
                                   by side, the parameters that changed, a
                                   before/after of two versions' finals
                                   (?a=&b=), the rerun form prefilled from
                                   version ?v= (default the latest).
- GET  /jobs/{id}/v/{n}/image.{fmt}          a version's final, and
- GET  /jobs/{id}/v/{n}/stages/{stage}.{fmt} a stage's output: the JSON API's
                                   `export_image` (recipe embedded at export) with
                                   the cookie's key; ?download=1 names a file.
- POST /jobs/{id}/rerun            RerunJob from the form (`rerun_form`); an
                                   API error re-renders the form with it
                                   beside the field it names.
- POST /jobs/{id}/v/{n}/share      a signed link (share.py's route), shown in
                                   a read-only field with a copy button.
- GET  /jobs/{id}/wait             answers when the job's latest version
                                   finishes (204 after WAIT_S: ask again), so
                                   the page reloads itself when a rerun is done.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from stageflow.client import FailedPrecondition, InvalidArgument, OutOfRange
from stageflow.client.recipe import select_version
from stageflow.gateway import share
from stageflow.gateway.errors import from_exception
from stageflow.gateway.jobs import (
    INT32_MAX,
    export_image,  # the JSON API's own image path
)
from stageflow.gateway.workspace import rerun_form
from stageflow.gateway.workspace.render import render, workspace_router
from stageflow.gateway.workspace.session import Session
from stageflow.gateway.workspace.versions import TERMINAL, columns, parameter_rows
from stageflow.v1 import orchestrator_pb2 as pb

router = workspace_router()

Version = Annotated[int, Path(ge=1, le=INT32_MAX, description="1 for the submitted job")]
ChosenVersion = Annotated[int | None, Query(ge=1, le=INT32_MAX)]
FORMATS = ("png", "webp", "jpeg")
# A long poll's length: under common proxies' idle timeouts (60 s).
WAIT_S = 25.0
# A rerun form has a dozen fields; refuse a body that makes the parser do more.
MAX_FORM_FIELDS = 64
_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
# Errors the rerun form shows beside a field (the rest are the error page's).
FORM_ERRORS = (InvalidArgument, FailedPrecondition, OutOfRange)


def page(
    request: Request,
    versions: Sequence[pb.Job],
    *,
    view: int | None = None,
    compare: tuple[int | None, int | None] = (None, None),
    submitted: rerun_form.Submitted | None = None,
    errors: dict[str, str] | None = None,
    shared: dict[int, dict[str, Any]] | None = None,
    status: int = 200,
) -> Response:
    """The job page for `versions`; `submitted` and `errors` re-show a refused rerun."""
    latest = versions[-1]
    viewed = select_version(versions, view or 0)
    before = select_version(
        versions, compare[0] or (versions[-2].version if len(versions) > 1 else 0)
    )
    after = select_version(versions, compare[1] or 0)
    stages = [run.stage for run in latest.stages]
    # The form starts where the viewed version was rerun from (else the first stage).
    default_stage = viewed.rerun_from or (stages[0] if stages else "")
    from_stage = submitted.request.from_stage if submitted else default_stage
    context = {
        "job": latest,
        "versions": versions,
        "viewed": viewed,
        "columns": columns(versions),
        "rows": parameter_rows(versions),
        "before": before,
        "after": after,
        "fields": rerun_form.fields_for(latest),
        "values": submitted.values if submitted else rerun_form.prefill(viewed),
        "errors": errors or {},
        "stages": stages,
        "from_stage": from_stage,
        "shared": shared or {},
        "running": latest.state not in TERMINAL,
    }
    return render(request, "job.html", context, status)


@router.get("/jobs/{job_id}", summary="A job's page")
async def job_page(
    client: Session,
    request: Request,
    job_id: str,
    v: ChosenVersion = None,
    a: ChosenVersion = None,
    b: ChosenVersion = None,
) -> Response:
    return page(request, await client.versions(job_id), view=v, compare=(a, b))


def _filename(job_id: str, version: int, stage: str, fmt: str) -> str:
    name = f"{job_id}-v{version}" + (f"-{stage}" if stage else "")
    return _FILE_CHARS.sub("_", name) + "." + fmt


async def _served(
    client: Session,
    request: Request,
    job_id: str,
    version: int,
    stage: str,
    fmt: str,
    download: bool,
) -> Response:
    response = await export_image(client, request, job_id, version, stage, fmt)
    if download:
        chosen = "jpeg" if fmt.lower() == "jpg" else fmt.lower()
        name = _filename(job_id, version, stage, "jpg" if chosen == "jpeg" else chosen)
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@router.get("/jobs/{job_id}/v/{version}/image.{fmt}", summary="A version's final image")
async def final_image(
    client: Session,
    request: Request,
    job_id: str,
    version: Version,
    fmt: str,
    download: bool = False,
) -> Response:
    return await _served(client, request, job_id, version, "", fmt, download)


@router.get("/jobs/{job_id}/v/{version}/stages/{stage}.{fmt}", summary="A stage's output")
async def stage_image(
    client: Session,
    request: Request,
    job_id: str,
    version: Version,
    stage: str,
    fmt: str,
    download: bool = False,
) -> Response:
    return await _served(client, request, job_id, version, stage, fmt, download)


def _placed(
    err: InvalidArgument | FailedPrecondition | OutOfRange, latest: pb.Job
) -> dict[str, str]:
    """The error under the form field it names: a field, a stage's fieldset
    (`refine`: that stage is before the rerun's first), from_stage; else the
    whole form's ("")."""
    fields = rerun_form.fields_for(latest)
    known = {f.name for f in fields} | {f.group for f in fields} | {"from_stage"}
    field = err.field or ""
    return {field if field in known else "": from_exception(err)[2]}


@router.post("/jobs/{job_id}/rerun", summary="Rerun a job from a stage (the page's form)")
async def rerun(client: Session, request: Request, job_id: str) -> Response:
    async with request.form(max_fields=MAX_FORM_FIELDS, max_files=0) as form:
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    versions = await client.versions(job_id)
    view = int(fields["version"]) if fields.get("version", "").isdigit() else None
    submitted = rerun_form.build(job_id, fields.get("from_stage", ""), fields, versions)
    if submitted.errors:
        return page(
            request, versions, view=view, submitted=submitted, errors=submitted.errors, status=400
        )
    try:
        job = await client.rerun_request(submitted.request)
    except FORM_ERRORS as err:
        errors = _placed(err, versions[-1])
        status = from_exception(err)[0]
        return page(request, versions, view=view, submitted=submitted, errors=errors, status=status)
    return RedirectResponse(f"/jobs/{job_id}?v={job.version}#v{job.version}", status_code=303)


@router.post("/jobs/{job_id}/v/{version}/share", summary="A share link of a version's final")
async def share_link(client: Session, request: Request, job_id: str, version: Version) -> Response:
    link = await share.share(client, request, job_id, version)
    if request.headers.get("hx-request"):
        return render(request, "_share.html", {"link": link, "version": version})
    return page(request, await client.versions(job_id), shared={version: link})


@router.get("/jobs/{job_id}/wait", summary="Answers when the job's latest version finishes")
async def wait(client: Session, job_id: str) -> Response:
    try:
        async with asyncio.timeout(WAIT_S):
            async for event in client.watch(job_id):
                if event.WhichOneof("event") == "finished":
                    return Response(status_code=200, headers={"Cache-Control": "no-store"})
    except TimeoutError:
        pass
    return Response(status_code=204, headers={"Cache-Control": "no-store"})
