"""Signing in to the workspace: the API key in an encrypted, HttpOnly cookie.

The page never sees the key: `POST /signin` checks it by asking the
orchestrator (a ListJobs of one job with that key: a wrong or revoked key is
UNAUTHENTICATED there, where keys are decided), then sets the cookie
``stageflow_session`` = AES-GCM(key, expiry) under the gateway's
`session_secret_key`: ``HttpOnly`` (no script reads it), ``SameSite=Lax``
(no cross-site POST carries it), ``Secure`` when served over HTTPS, lasting
`session_max_age_seconds`. Every workspace request decrypts it into the same
`StageflowClient.with_api_key` client the JSON API uses with a Bearer key;
no cookie (or an expired or altered one) is no key, which an orchestrator
without authentication (the embedded `stageflow up`) accepts, so that page
opens straight in, and one with authentication answers UNAUTHENTICATED, which
the workspace turns into a redirect to /signin (`render.WorkspaceRoute`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from stageflow.client import StageflowClient, Unauthenticated
from stageflow.gateway.workspace.cookie import COOKIE, codec, current_key
from stageflow.gateway.workspace.render import render, workspace_router

# Bound what a sign-in form may send before it reaches the orchestrator.
MAX_KEY_CHARS = 512

router = workspace_router()


async def session_client(request: Request) -> StageflowClient:
    """The app's client with the cookie's key ("" without one), as `jobs.caller`
    gives it with a Bearer key."""
    client: StageflowClient = request.app.state.client
    return client.with_api_key(current_key(request) or "")


Session = Annotated[StageflowClient, Depends(session_client)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/signin", summary="The sign-in form")
async def signin_form(request: Request, next: str = "/") -> Response:
    return render(request, "signin.html", {"next": safe_next(next), "errors": {}})


@router.post("/signin", summary="Sign in with an API key (checked by the orchestrator)")
async def signin(
    request: Request,
    key: Annotated[str, Form(max_length=MAX_KEY_CHARS)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    key = key.strip()
    target = safe_next(next)
    if not key:
        return _refused(request, target, "enter an API key", 400)
    client: StageflowClient = request.app.state.client
    try:
        await client.with_api_key(key).list(page_size=1)
    except Unauthenticated as err:
        return _refused(request, target, f"this key was refused: {err.message}", 401)
    response = RedirectResponse(target, status_code=303)
    sessions = codec(request)
    response.set_cookie(
        COOKIE,
        sessions.seal(key),
        max_age=sessions.max_age_s,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


def _refused(request: Request, target: str, message: str, status: int) -> Response:
    return render(request, "signin.html", {"next": target, "errors": {"key": message}}, status)


@router.post("/signout", summary="Sign out (forget the cookie)")
async def signout(request: Request) -> Response:
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
    return response
