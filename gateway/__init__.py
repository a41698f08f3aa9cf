"""The gateway: stageflow over HTTP/JSON (and an OpenAI-compatible Images API).

An ASGI app (FastAPI on uvicorn) in front of the orchestrator. It holds no job
logic: every route decodes HTTP, calls the orchestrator's gRPC API through
`stageflow.client`, and encodes the answer, so tenants, validation and job
state stay where they are enforced (the orchestrator's job layer). The
caller's ``Authorization: Bearer KEY`` is passed through unchanged.

It also serves the browser workspace at `/` (`stageflow.gateway.workspace`:
server-rendered pages over the same client calls, the key from a sign-in
cookie instead of the header).

`python -m stageflow.gateway` runs it (default port 8080); `create_app` builds
the app for a given client.
"""

from __future__ import annotations

from stageflow.gateway.app import create_app
from stageflow.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
