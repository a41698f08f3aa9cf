"""Share links: a version's final image, and a small read-only page, without a key.

`POST /v1/jobs/{id}/versions/{n}/share` asks the orchestrator (with the
caller's key, so only the job's tenant can share it) to sign a token for that
version's final image; the link is ``/share/<token>`` (the page) and
``/share/<token>/image`` (the PNG). Opening one sends no key: the
orchestrator's GetSharedArtifact checks the signature (HMAC over the path and
the expiry: a changed byte is 403) and then the expiry (410), so the
signing secret and the decision stay in the orchestrator, and rotating that
secret revokes every link.
"""

from __future__ import annotations

import hashlib
import html
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from stageflow.client import StageflowClientError
from stageflow.gateway.errors import error_body, from_exception
from stageflow.gateway.jobs import INT32_MAX, Client

router = APIRouter(tags=["share"])

TOKEN_PATH = "{job_id}/{version}/{expires}/{signature}"


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        description="Seconds the link lives; 0 (default) the orchestrator's maximum.",
    )


def _public(request: Request, path: str) -> str:
    base = request.app.state.settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


@router.post(
    "/v1/jobs/{job_id}/versions/{version}/share",
    status_code=201,
    summary="A signed link to a version's final image (no key needed to open it)",
)
async def share(
    client: Client,
    request: Request,
    job_id: str,
    version: Annotated[
        int, Path(ge=1, le=INT32_MAX, description="1 for the submitted job, N+1 per rerun")
    ],
    body: Annotated[ShareRequest | None, Body()] = None,
) -> dict[str, Any]:
    expires_in = body.expires_in if body is not None else 0
    reply = await client.share(job_id, version, expires_in)
    page = _public(request, f"/share/{reply.token}")
    return {
        "url": page,
        "image_url": f"{page}/image",
        "expires_at": reply.expires_at.ToDatetime(UTC).isoformat(),
        "version": reply.version,
    }


def _link_error(err: StageflowClientError) -> JSONResponse:
    status, code, message, field = from_exception(err)
    if code == "OUT_OF_RANGE":
        status = 410  # expired: the link existed and is gone
    return JSONResponse(error_body(code, message, field), status)


async def _open(client: Client, token: str) -> tuple[str, bytes] | JSONResponse:
    try:
        ref, data = await client.with_api_key("").shared(token)
    except StageflowClientError as err:
        return _link_error(err)
    return ref.sha256, data


_SHARED = {
    403: {"description": "The link was altered (its signature does not match)"},
    410: {"description": "The link has expired"},
}


@router.get(
    f"/share/{TOKEN_PATH}/image",
    summary="A shared final image (PNG)",
    responses={200: {"content": {"image/png": {}}}, **_SHARED},  # type: ignore[dict-item]
)
async def shared_image(
    client: Client, job_id: str, version: str, expires: str, signature: str
) -> Response:
    token = f"{job_id}/{version}/{expires}/{signature}"
    try:
        _, data = await client.with_api_key("").shared_export(token)
    except StageflowClientError as err:
        return _link_error(err)
    # The PNG carries its recipe (added at export), so the ETag is these bytes'.
    return Response(
        data,
        media_type="image/png",
        headers={
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Cache-Control": "public, max-age=300",
        },
    )


@router.get(
    f"/share/{TOKEN_PATH}",
    summary="A small read-only page showing a shared image",
    response_class=HTMLResponse,
    responses=_SHARED,  # type: ignore[arg-type]
)
async def shared_page(
    client: Client, job_id: str, version: str, expires: str, signature: str
) -> Response:
    token = f"{job_id}/{version}/{expires}/{signature}"
    opened = await _open(client, token)
    if isinstance(opened, JSONResponse):
        return opened
    sha256, data = opened
    until = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = html.escape(f"{job_id} version {version}")
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>stageflow: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;background:#111;color:#eee}}
img{{max-width:100%;image-rendering:auto;border:1px solid #333}}small{{color:#999}}</style>
</head><body>
<h1>{name}</h1>
<p><img src="{html.escape(signature)}/image" alt="{name}"></p>
<p><small>{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}…
(recorded {html.escape(sha256[:16])}…); this link expires {until}.</small></p>
</body></html>
"""
    return HTMLResponse(
        body, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )
