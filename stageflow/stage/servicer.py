"""The one StageService implementation every stage process shares: decode the
request, hand it to the stage data plane (stageflow.stage.dataplane), encode
what comes back. The model never sees gRPC; this module never imports torch.

Errors are stageflow.core.errors exceptions; the shared ErrorInterceptor maps them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from stageflow.stage import codec as stage_codec
from stageflow.stage.dataplane import Finished, InputRef, Progress, StageCall, StageDataPlane
from stageflow.v1 import common_pb2, stage_pb2, stage_pb2_grpc


class StageServicer(stage_pb2_grpc.StageServiceServicer):
    def __init__(self, plane: StageDataPlane) -> None:
        self._plane = plane

    async def Describe(
        self, request: stage_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> stage_pb2.DescribeResponse:
        return stage_codec.describe_response(
            self._plane.describe(),
            ready=self._plane.ready,
            max_concurrency=self._plane.max_concurrency,
            max_queue=self._plane.max_queue,
        )

    async def Run(
        self, request: stage_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        # The whole call, decoding included, uses the model current at its start.
        with self._plane.lease() as lease:
            desc = lease.model.describe()
            params = stage_codec.params_from_request(request, desc.param_defaults)
            warnings = stage_codec.prompt_warnings(params, desc)
            call = StageCall(
                params=params,
                image=_input(request, "image"),
                mask=_input(request, "mask"),
                latents=_input(request, "latents"),
                time_remaining=context.time_remaining(),
                job_id=request.job_id,
                output_prefix=request.output_prefix,
            )
            async with contextlib.aclosing(self._plane.run(lease, call)) as events:
                async for event in events:
                    yield _response(event, warnings)


def _input(request: stage_pb2.RunRequest, field: str) -> InputRef | None:
    if not request.HasField(field):
        return None
    ref: common_pb2.ArtifactRef = getattr(request, field)
    return InputRef(field=field, key=ref.key, sha256=ref.sha256)


def _response(event: Progress | Finished, warnings: list[str]) -> stage_pb2.RunResponse:
    if isinstance(event, Progress):
        return stage_pb2.RunResponse(
            progress=stage_pb2.Progress(
                step=event.step, total_steps=event.total_steps, elapsed_ms=event.elapsed_ms
            )
        )
    t = event.timing
    result = stage_pb2.StageResult(
        output=stage_codec.artifact_ref(event.artifact),
        model=stage_codec.model_info(event.model),
        timing=common_pb2.Timing(
            queue_ms=t.queue_ms,
            load_inputs_ms=t.load_inputs_ms,
            compute_ms=t.compute_ms,
            store_output_ms=t.store_output_ms,
            total_ms=t.total_ms,
        ),
        width=event.output.size[0],
        height=event.output.size[1],
        warnings=warnings,
    )
    if event.output.text_check is not None:
        result.text_check.CopyFrom(stage_codec.text_check(event.output.text_check))
    return stage_pb2.RunResponse(result=result)
