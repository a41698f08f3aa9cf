"""The workspace: the gateway's browser pages at `/` (Jinja2 templates + htmx).

Every page is server-rendered from the same `StageflowClient` calls the JSON
API makes (no second copy of job logic); the key comes from the sign-in
cookie instead of a Bearer header. The layout, so each part has one home:

- `cookie.py`   the sign-in cookie (an AES-GCM sealed API key + expiry).
- `session.py`  /signin, /signout, and `Session`: the dependency giving the
                client with the cookie's key.
- `render.py`   the templates, `render()`, and `workspace_router()`: routes
                whose API errors become pages (UNAUTHENTICATED -> /signin,
                NOT_FOUND -> the not-found page) and whose POSTs are same-site.
- `pages.py`    / (New image), /gallery, /jobs/{id}/progress + /events (live
                progress, cancel), /thumbs/... (gallery thumbnails).
- `job.py`      /jobs/{id}: the job page (versions, stages, rerun, share);
                `versions.py` and `rerun_form.py` its pure parts.
- `shared.py`   /share/{token}: the read-only page a share link opens.
- `templates/`  base.html (the layout: header, nav, sign-out, `{% block
                content %}`) and one template per page; `_name.html` are
                fragments (htmx swaps them, pages include them).
- `static/`     workspace.css, workspace.js (committed source) and vendor/
                htmx.min.js (from npm: `make setup` runs `npm ci` here and copies
                it; git-ignored). Without it the pages still work (plain forms
                and links; progress comes from workspace.js's EventSource), and
                the gateway logs `workspace.htmx_missing` at start-up.

A new page: a module with `router = workspace_router()`, its template extending
base.html, and one line in `ROUTERS` below.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from stageflow.core.logging import get_logger
from stageflow.gateway.settings import GatewaySettings
from stageflow.gateway.workspace import job, pages, session, shared
from stageflow.gateway.workspace.cookie import make_codec
from stageflow.gateway.workspace.render import HTMX_FILE, STATIC_DIR

ROUTERS = (session.router, pages.router, job.router, shared.router)

__all__ = ["include"]


def include(app: FastAPI, settings: GatewaySettings) -> None:
    """Mount the workspace's pages and /static on `app`."""
    app.state.sessions = make_codec(settings)
    app.state.workspace_htmx = HTMX_FILE.is_file()
    if not app.state.workspace_htmx:
        get_logger(__name__).warning(
            "workspace.htmx_missing",
            path=str(HTMX_FILE),
            detail="the workspace runs without htmx (plain forms, full page loads); "
            "run `make setup` (npm ci in stageflow/gateway/workspace) to add it",
        )
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
