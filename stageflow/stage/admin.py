"""StageAdminService: swap the stage's model version without a restart."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from stageflow.core.errors import FailedPrecondition, InvalidArgument, StageflowError
from stageflow.core.logging import get_logger
from stageflow.inference.interface import StageModel
from stageflow.stage import codec as stage_codec
from stageflow.stage.model_holder import ModelHolder
from stageflow.v1 import stage_pb2, stage_pb2_grpc

log = get_logger(__name__)

ADMIN_SERVICE_NAME = stage_pb2.DESCRIPTOR.services_by_name["StageAdminService"].full_name

# "name@version" -> a loaded model (blocking; raises StageflowError on failure).
LoadFn = Callable[[str], StageModel]


class StageAdminServicer(stage_pb2_grpc.StageAdminServiceServicer):
    def __init__(self, holder: ModelHolder, load: LoadFn | None) -> None:
        self._holder = holder
        self._load = load

    async def LoadModel(
        self, request: stage_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> stage_pb2.LoadModelResponse:
        load = self._load
        if load is None:
            raise FailedPrecondition(
                "this stage has no model repository; start it with --model-repository ROOT"
            )
        ref = request.model.strip()
        if not ref:
            raise InvalidArgument("model", "must be name@version (or name for its latest)")
        log.info("model.swap.start", model=ref)
        try:
            model = await self._holder.swap(lambda: load(ref))
        except StageflowError as e:
            log.warning("model.swap.failed", model=ref, code=e.code, error=e.message)
            raise
        identity = model.describe().identity
        log.info(
            "model.swapped",
            model=identity.name,
            version=identity.version,
            backend=identity.backend,
            fingerprint=identity.fingerprint,
        )
        return stage_pb2.LoadModelResponse(model=stage_codec.model_info(identity))
