"""Process entry shared by every stage: settings → store → model → serve.

`services/<stage>/__main__.py` only names its defaults and its model factory,
so serving/ never imports the model registry (or torch) itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from inference.interface import StageModel
from serving.logging import configure_logging, get_logger
from serving.server import Service, serve
from serving.settings import StageSettings, load_settings
from serving.stage_servicer import StageServicer
from stageflow.v1 import stage_pb2, stage_pb2_grpc

ModelFactory = Callable[..., StageModel]

STAGE_SERVICE_NAME = stage_pb2.DESCRIPTOR.services_by_name["StageService"].full_name


def run_stage(
    stage: str, create_model: ModelFactory, argv: Sequence[str] | None = None, **defaults: Any
) -> None:
    settings = load_settings(StageSettings, list(argv) if argv is not None else None, **defaults)
    configure_logging(level=settings.log_level, json=settings.log_json, service=stage)
    log = get_logger(__name__)
    store = settings.open_store()
    model = create_model(
        settings.model_family,
        Path(settings.model_path),
        name=settings.model_name,
        version=settings.model_version,
        device=settings.device,
        torch_threads=settings.torch_threads,
        max_side=settings.max_side,
    )
    servicer = StageServicer(
        model,
        store,
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        output_prefix=settings.output_prefix,
    )

    def register(server: grpc.aio.Server) -> None:
        stage_pb2_grpc.add_StageServiceServicer_to_server(servicer, server)

    async def startup() -> None:
        await asyncio.to_thread(model.load)
        servicer.ready = True
        identity = model.describe().identity
        log.info(
            "stage.ready",
            stage=stage,
            model=identity.name,
            version=identity.version,
            backend=identity.backend,
            store=store.describe(),
        )

    async def shutdown() -> None:
        servicer.ready = False
        servicer.close()
        model.unload()

    asyncio.run(
        serve([Service(STAGE_SERVICE_NAME, register)], settings, startup=startup, shutdown=shutdown)
    )
