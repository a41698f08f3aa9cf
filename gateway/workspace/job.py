"""/jobs/{id}: the job page (a placeholder: the job's state and its live
progress; the full page, every version as a column, comes with rerun and share)."""

from __future__ import annotations

from fastapi import Request, Response

from stageflow.gateway.workspace.render import render, workspace_router
from stageflow.gateway.workspace.session import Session

router = workspace_router()


@router.get("/jobs/{job_id}", summary="A job's page")
async def job_page(client: Session, request: Request, job_id: str) -> Response:
    versions = await client.versions(job_id)
    return render(request, "job.html", {"job": versions[-1], "versions": versions})
