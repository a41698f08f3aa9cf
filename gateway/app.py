"""The ASGI app: routers, the one error mapping, health and readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stageflow.client import ClientSettings, StageflowClient, StageflowClientError
from stageflow.client.aio import open_channel
from stageflow.gateway import images, jobs, share, uploads, workspace
from stageflow.gateway.errors import GatewayError, error_body, json_error
from stageflow.gateway.settings import GatewaySettings


async def orchestrator_serving(settings: ClientSettings, deadline_s: float = 2.0) -> bool:
    """True when the orchestrator's grpc.health.v1 answers SERVING (over the
    client's own channel settings: TLS when it uses TLS)."""
    async with open_channel(settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=deadline_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def create_app(client_settings: ClientSettings, settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway for the orchestrator `client_settings` names (no key of its own:
    each request's Bearer key is passed through); `settings` give its limits."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = StageflowClient(settings=client_settings)
        try:
            yield
        finally:
            await app.state.client.close()

    app = FastAPI(
        title="stageflow gateway",
        version="1",
        summary="Staged image generation over HTTP/JSON and an OpenAI-compatible Images API.",
        lifespan=lifespan,
    )
    settings = settings if settings is not None else GatewaySettings()
    app.state.settings = settings
    for exc in (StageflowClientError, GatewayError, RequestValidationError):
        app.add_exception_handler(exc, json_error)
    app.include_router(jobs.router)
    app.include_router(images.router)
    app.include_router(uploads.router)
    app.include_router(share.router)
    workspace.include(app, settings)

    @app.get("/healthz", tags=["probes"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], summary="Ready: the orchestrator answers SERVING")
    async def readyz() -> JSONResponse:
        if await orchestrator_serving(client_settings):
            return JSONResponse({"status": "ready"})
        body = error_body("UNAVAILABLE", "the orchestrator does not answer SERVING", None)
        return JSONResponse(body, status_code=503)

    return app
