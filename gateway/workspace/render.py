"""Templates, and the one place the workspace turns API errors into pages.

Every workspace route is a `WorkspaceRoute`: the errors the JSON API answers
as ``{"error": ...}`` become pages here instead. UNAUTHENTICATED (no key, a
wrong or revoked one) is a redirect to /signin that comes back to the page;
NOT_FOUND (an unknown job, or another tenant's: the orchestrator does not tell
them apart) the not-found page, 404; every other error the error page with
the status of the one table (`errors.HTTP_STATUS`). A POST from another site
is refused before it runs (the cookie is SameSite=Lax already; this also
covers browsers that do not honour it).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from stageflow.client import NotFound, StageflowClientError, Unauthenticated
from stageflow.gateway.errors import GatewayError, from_exception
from stageflow.gateway.workspace.cookie import current_key
from stageflow.v1 import orchestrator_pb2 as pb

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
# Copied there by `make setup` (npm ci in this folder); never committed.
HTMX_FILE = STATIC_DIR / "vendor" / "htmx.min.js"
API_ERRORS = (StageflowClientError, GatewayError, RequestValidationError)
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

_DONE = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def state_name(state: int) -> str:
    """A job's state in short: JOB_STATE_RUNNING -> "running"."""
    return str(pb.JobState.Name(state)).removeprefix("JOB_STATE_").lower()


def stage_state_name(state: int) -> str:
    """A stage run's state in short: STAGE_STATE_PENDING -> "pending"."""
    return str(pb.StageState.Name(state)).removeprefix("STAGE_STATE_").lower()


def thumb_url(job: pb.Job, stage: str = "final") -> str:
    return f"/thumbs/{job.job_id}/{job.version or 1}/{stage}.webp"


def cover(job: pb.Job) -> str | None:
    """The thumbnail a gallery card shows: the final image, else the latest
    stage output there is."""
    if job.final.key:
        return thumb_url(job)
    done = [run.stage for run in job.stages if run.output.key]
    return thumb_url(job, done[-1]) if done else None


def finished(job: pb.Job) -> bool:
    return job.state in _DONE


templates = Jinja2Templates(directory=HERE / "templates")
# What every template may call.
templates.env.globals.update(
    state_name=state_name,
    stage_state_name=stage_state_name,
    thumb_url=thumb_url,
    cover=cover,
    finished=finished,
)


def render(
    request: Request, name: str, context: Mapping[str, Any] | None = None, status: int = 200
) -> Response:
    """Template `name` with the layout's own values (signed in, htmx there) added."""
    values = {
        "signed_in": current_key(request) is not None,
        "htmx": request.app.state.workspace_htmx,
        **(context or {}),
    }
    return templates.TemplateResponse(request, name, values, status_code=status)


def signin_url(request: Request) -> str:
    """/signin, coming back to this page after."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/signin?next={quote(here, safe='')}"


def error_page(request: Request, err: Exception) -> Response:
    if isinstance(err, Unauthenticated):
        target = signin_url(request)
        if request.headers.get("hx-request"):  # htmx follows this header, not a 303
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    status, code, message, field = from_exception(err)
    if isinstance(err, NotFound):
        return render(request, "not_found.html", {"message": message}, 404)
    context = {"code": code, "message": message, "field": field, "status": status}
    return render(request, "error.html", context, status)


def cross_site(request: Request) -> bool:
    """A browser says this request comes from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


class WorkspaceRoute(APIRoute):
    """A route whose API errors are pages (`error_page`), and whose POSTs are same-site."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method not in _SAFE_METHODS and cross_site(request):
                refused = GatewayError("PERMISSION_DENIED", "a form from another site: refused")
                return error_page(request, refused)
            try:
                return await handler(request)
            except API_ERRORS as err:
                return error_page(request, err)

        return route


def workspace_router() -> APIRouter:
    """A router of workspace pages: `WorkspaceRoute`s, left out of the OpenAPI."""
    return APIRouter(route_class=WorkspaceRoute, include_in_schema=False, tags=["workspace"])
