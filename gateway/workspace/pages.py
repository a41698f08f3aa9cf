"""The workspace's own pages: New image, the gallery, live progress, thumbnails."""

from __future__ import annotations

from fastapi import Request, Response

from stageflow.gateway.workspace.render import render, workspace_router
from stageflow.gateway.workspace.session import Session

router = workspace_router()


@router.get("/", summary="New image")
async def home(client: Session, request: Request) -> Response:
    pipelines = await client.pipelines()
    return render(request, "new.html", {"pipelines": pipelines, "values": {}, "errors": {}})
