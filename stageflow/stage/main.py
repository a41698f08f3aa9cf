"""Process entry shared by every stage: settings → store → model → serve.

`python -m stageflow.stage NAME` (and `services/<name>/__main__.py`) serve the
stage kind NAME of the registry (stageflow.kinds): its declaration gives the
default model family and folder, and which family serves it from each
model.yaml format. The model factory is passed in, so serving/ never imports
the model registry (or torch) itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from stageflow import kinds
from stageflow.core import collector
from stageflow.core.errors import StageflowError
from stageflow.core.logging import configure_logging, get_logger
from stageflow.inference.digests import DigestCache
from stageflow.inference.interface import StageModel
from stageflow.inference.model_loader import RepositoryLoader
from stageflow.inference.repository import ModelRepository
from stageflow.inference.vae_tiling import VaeTiling
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import StageSettings, load_settings
from stageflow.stage import codec
from stageflow.stage.admin import ADMIN_SERVICE_NAME, StageAdminServicer
from stageflow.stage.dataplane import StageDataPlane
from stageflow.stage.model_holder import ModelHolder
from stageflow.stage.servicer import StageServicer
from stageflow.v1 import stage_pb2, stage_pb2_grpc

ModelFactory = Callable[..., StageModel]

STAGE_SERVICE_NAME = stage_pb2.DESCRIPTOR.services_by_name["StageService"].full_name


def kind_defaults(kind: kinds.Kind) -> dict[str, Any]:
    """The settings defaults a stage of `kind` starts with: its declared model."""
    return {
        "model_family": kind.model_family,
        "model_path": str(Path("models") / (kind.model_folder or kind.name)),
    }


def model_options(settings: StageSettings) -> dict[str, Any]:
    """What every model constructor takes from the settings besides its folder
    (stageflow.inference.base.LocalModel): precision, digest cache, warm-up, compiled
    graphs, VAE tiling."""
    return {
        "dtype": settings.dtype,
        "digest_cache": settings.digest_cache,
        "warmup": settings.warmup,
        "compile": settings.compile,
        "channels_last": settings.channels_last,
        "vae_tiling": VaeTiling(
            above_side=settings.vae_tile_above_side,
            budget_mb=settings.vae_memory_budget_mb,
            tile_side=settings.vae_tile_side,
            overlap=settings.vae_tile_overlap,
        ),
    }


def run_stage(
    stage: str, create_model: ModelFactory, argv: Sequence[str] | None = None, **defaults: Any
) -> None:
    """Serve the stage kind `stage`; `defaults` replace its declared ones."""
    collector.pause()  # until the first model is loaded (stageflow.core.collector)
    kind = kinds.get(stage)
    codec.install()  # the model layer learns each kind's params type and families
    settings = load_settings(
        StageSettings,
        list(argv) if argv is not None else None,
        **{**kind_defaults(kind), **defaults},
    )
    configure_logging(level=settings.log_level, json=settings.log_json, service=stage)
    log = get_logger(__name__)
    try:
        store = settings.open_store()
    except StageflowError as err:  # the store cannot be reached: one line, not a traceback
        raise SystemExit(f"{stage}: {err.message}") from None
    loader = _repository_loader(kind, settings, create_model)

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
            **model_options(settings),
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
        collector.resume()
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

    try:
        asyncio.run(
            serve(
                [
                    Service(STAGE_SERVICE_NAME, register),
                    Service(ADMIN_SERVICE_NAME, register_admin),
                ],
                settings,
                startup=startup,
                shutdown=shutdown,
                name=stage,
            )
        )
    except OSError as err:  # the address cannot be bound
        raise SystemExit(
            f"{stage}: cannot serve on {settings.host}:{settings.port}: {err}"
        ) from None


def _repository_loader(
    kind: kinds.Kind, settings: StageSettings, create_model: ModelFactory
) -> RepositoryLoader | None:
    if not settings.model_repository:
        return None
    repository = ModelRepository(
        settings.model_repository,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        region=settings.s3_region,
        cache_dir=settings.model_cache,
        digests=DigestCache(settings.digest_cache),
    )
    return RepositoryLoader(
        repository,
        kind.model_kind,
        create_model,
        families=kind.families,
        device=settings.device,
        torch_threads=settings.torch_threads,
        max_side=settings.max_side,
        providers=settings.provider_list(),
        engine_cache=settings.trt_cache,
        model_options=model_options(settings),
    )
