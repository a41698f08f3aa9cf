"""/share/{token}: the read-only page a share link opens, without a key.

The token is the authority (share.py): the page asks the orchestrator's
GetSharedArtifact with no key, and shows the final image (from
``/share/<token>/image``), its recipe (the A1111 parameters text and each
stage's model, from the job version the token names: no tenant, no store
URL) and when the link expires. An altered link is the error page, 403; an
expired one 410.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from stageflow.client import StageflowClient, StageflowClientError
from stageflow.client.recipe import parameters_text
from stageflow.gateway.share import SHARED_ERRORS, TOKEN_PATH, link_status
from stageflow.gateway.workspace.render import render
from stageflow.gateway.workspace.versions import columns

router = APIRouter(include_in_schema=True, tags=["share"])
# Nothing of a shared page is for caches, nor for the next site's Referer.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@router.get(
    f"/share/{TOKEN_PATH}",
    summary="The read-only page of a shared image and its recipe",
    response_class=HTMLResponse,
    responses=SHARED_ERRORS,  # type: ignore[arg-type]
)
async def shared_page(
    request: Request, job_id: str, version: str, expires: str, signature: str
) -> Response:
    token = f"{job_id}/{version}/{expires}/{signature}"
    client: StageflowClient = request.app.state.client
    try:
        job, data = await client.with_api_key("").shared_export(token)
    except StageflowClientError as err:
        status, code, message, _ = link_status(err)
        context = {"code": code, "message": message, "status": status}
        response = render(request, "error.html", context, status)
    else:
        context = {
            "job": job,
            "version": job.version or 1,
            "image_url": f"{request.url.path}/image",
            "parameters": parameters_text(job),
            "column": columns([job])[0],
            "until": datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        response = render(request, "shared.html", context)
    response.headers.update(HEADERS)
    return response
