"""Share links: a version's final image, and a small read-only page, without a key.

`POST /v1/jobs/{id}/versions/{n}/share` asks the orchestrator (with the
caller's key, so only the job's tenant can share it) to sign a token for that
version's final image; the link is ``/share/<token>`` (the page) and
``/share/<token>/image`` (the PNG); the page is the workspace's
(`workspace/shared.py`: the image and its recipe, read-only). Opening one sends no key: the
orchestrator's GetSharedArtifact checks the signature (HMAC over the path and
the expiry: a changed byte is 403) and then the expiry (410), so the
signing secret and the decision stay in the orchestrator, and rotating that
secret revokes every link.
"""

from __future__ import annotations

import hashlib
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.responses import JSONResponse
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


def link_status(err: StageflowClientError) -> tuple[int, str, str, str | None]:
    """`from_exception`'s answer, with an expired link 410 (it existed and is gone)."""
    status, code, message, field = from_exception(err)
    return (410 if code == "OUT_OF_RANGE" else status), code, message, field


def _link_error(err: StageflowClientError) -> JSONResponse:
    status, code, message, field = link_status(err)
    return JSONResponse(error_body(code, message, field), status)


SHARED_ERRORS = {
    403: {"description": "The link was altered (its signature does not match)"},
    410: {"description": "The link has expired"},
}


@router.get(
    f"/share/{TOKEN_PATH}/image",
    summary="A shared final image (PNG)",
    responses={200: {"content": {"image/png": {}}}, **SHARED_ERRORS},  # type: ignore[dict-item]
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
