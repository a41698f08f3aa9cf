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

from stageflow.core.logging import configure_logging, get_logger
from stageflow.inference.interface import StageModel
from stageflow.inference.model_loader import STAGE_KINDS, RepositoryLoader
from stageflow.inference.repository import ModelRepository
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import StageSettings, load_settings
from stageflow.stage.admin import ADMIN_SERVICE_NAME, StageAdminServicer
from stageflow.stage.dataplane import StageDataPlane
from stageflow.stage.model_holder import ModelHolder
from stageflow.stage.servicer import StageServicer
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
    loader = _repository_loader(stage, settings, create_model)

    def initial_model() -> StageModel:
        # The repository's model takes precedence over model_family/model_path.
        if loader is not None and settings.model:
            return loader.load(settings.model)
        model = create_model(
            settings.model_family,
            Path(settings.model_path),
            name=settings.model_name,
            version=settings.model_version,
            device=settings.device,
            torch_threads=settings.torch_threads,
            max_side=settings.max_side,
            backend=settings.backend,
            providers=settings.provider_list(),
            engine_cache=settings.trt_cache,
        )
        model.load()
        return model

    holder = ModelHolder()
    admin = StageAdminServicer(holder, loader.load if loader is not None else None)
    plane = StageDataPlane(
        holder,
        store,
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        output_prefix=settings.output_prefix,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_ms=settings.max_queue_delay_ms,
        stage=stage,
    )
    servicer = StageServicer(plane)

    def register(server: grpc.aio.Server) -> None:
        stage_pb2_grpc.add_StageServiceServicer_to_server(servicer, server)

    def register_admin(server: grpc.aio.Server) -> None:
        stage_pb2_grpc.add_StageAdminServiceServicer_to_server(admin, server)

    async def startup() -> None:
        model = await holder.swap(initial_model)
        plane.ready = True
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
        plane.ready = False
        plane.close()
        await holder.aclose()

    asyncio.run(
        serve(
            [Service(STAGE_SERVICE_NAME, register), Service(ADMIN_SERVICE_NAME, register_admin)],
            settings,
            startup=startup,
            shutdown=shutdown,
            name=stage,
        )
    )


def _repository_loader(
    stage: str, settings: StageSettings, create_model: ModelFactory
) -> RepositoryLoader | None:
    if not settings.model_repository:
        return None
    repository = ModelRepository(
        settings.model_repository,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        region=settings.s3_region,
        cache_dir=settings.model_cache,
    )
    return RepositoryLoader(
        repository,
        STAGE_KINDS[stage],
        create_model,
        device=settings.device,
        torch_threads=settings.torch_threads,
        max_side=settings.max_side,
        providers=settings.provider_list(),
        engine_cache=settings.trt_cache,
    )
