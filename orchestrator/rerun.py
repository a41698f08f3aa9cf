"""From a finished job and a RerunJobRequest to its next version (pure).

The new version keeps every stage before `from_stage` exactly as it was (its
parameters and output artifact), and gets fresh PENDING runs from `from_stage`
on; the runner then builds their requests from the merged options.
"""

from __future__ import annotations

from google.protobuf import json_format

from stageflow import kinds
from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.orchestrator.bundle import compose_prompt
from stageflow.orchestrator.validation import check_request
from stageflow.v1 import orchestrator_pb2

_TERMINAL = (
    orchestrator_pb2.JOB_STATE_SUCCEEDED,
    orchestrator_pb2.JOB_STATE_FAILED,
    orchestrator_pb2.JOB_STATE_CANCELLED,
)


def _option_fields() -> tuple[str, ...]:
    """The RerunJobRequest fields named after a stage: kinds with an options message."""
    fields = orchestrator_pb2.RerunJobRequest.DESCRIPTOR.fields_by_name
    return tuple(k.name for k in kinds.all_kinds() if k.has_options_message and k.name in fields)


def _overrides(rerun: orchestrator_pb2.RerunJobRequest, stage: str) -> bool:
    """Whether the rerun changes `stage`'s options."""
    if stage in _option_fields():
        return rerun.HasField(stage)
    return stage in rerun.options


def apply_overrides(
    previous: orchestrator_pb2.Job, rerun: orchestrator_pb2.RerunJobRequest
) -> orchestrator_pb2.Job:
    """Version N+1 of `previous` (QUEUED); raises naming the offending field."""
    if previous.state not in _TERMINAL:
        raise FailedPrecondition(f"job {previous.job_id} has not finished; wait or cancel it")
    names = [run.stage for run in previous.stages]
    if rerun.from_stage not in names:
        raise InvalidArgument(
            "from_stage", f"must be a stage of job {previous.job_id}: {', '.join(names)}"
        )
    first = names.index(rerun.from_stage)
    for upstream in previous.stages[:first]:
        if upstream.state != orchestrator_pb2.STAGE_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"stage {upstream.stage} of job {previous.job_id} has no output to reuse; "
                f"rerun from {upstream.stage}"
            )
        if _overrides(rerun, upstream.stage):
            named = upstream.stage in _option_fields()
            raise InvalidArgument(
                upstream.stage if named else f"options.{upstream.stage}",
                f"the {upstream.stage} stage comes before {rerun.from_stage} and is reused "
                f"unchanged; rerun from {upstream.stage} to change it",
            )

    request = orchestrator_pb2.SubmitJobRequest()
    request.CopyFrom(previous.request)
    for name in _option_fields():
        if rerun.HasField(name):
            getattr(request, name).MergeFrom(getattr(rerun, name))
    for name, values in rerun.options.items():
        request.options[name].update(json_format.MessageToDict(values))  # key by key
    for name in ("base", "style", "overlay_text", "negative_prompt"):
        if rerun.bundle.HasField(name):
            setattr(request.bundle, name, getattr(rerun.bundle, name))
    request.request_id = ""  # the idempotency key belongs to version 1's submit
    check_request(request)

    job = orchestrator_pb2.Job()
    job.CopyFrom(previous)
    job.version = (previous.version or 1) + 1  # jobs stored before versions are 1
    job.rerun_from = rerun.from_stage
    job.state = orchestrator_pb2.JOB_STATE_QUEUED
    job.request.CopyFrom(request)
    job.bundle.CopyFrom(request.bundle)
    job.prompt = compose_prompt(request.bundle)
    for name in ("final", "final_url", "error"):
        job.ClearField(name)
    del job.stages[first:]
    job.stages.extend(
        orchestrator_pb2.StageRun(
            stage=run.stage, service=run.service, state=orchestrator_pb2.STAGE_STATE_PENDING
        )
        for run in previous.stages[first:]
    )
    return job
