"""Which artifact of which job version a GetArtifact request names, and its chunks.

Only what a job version references (its final image and its stages' outputs)
is served: the request names a job, so it can never read another object of
the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from stageflow.core.errors import FailedPrecondition, InvalidArgument, NotFound
from stageflow.core.limits import quote
from stageflow.core.storage import check_key
from stageflow.v1 import common_pb2, orchestrator_pb2

# Bytes per GetArtifactResponse: well under the 16 MiB message limit, and large
# enough that a multi-megabyte PNG takes a handful of messages.
CHUNK_BYTES = 1024 * 1024


def check_artifact_request(request: orchestrator_pb2.GetArtifactRequest) -> None:
    """INVALID_ARGUMENT naming the field, before any lookup."""
    if not request.job_id:
        raise InvalidArgument("job_id", "must not be empty")
    if request.version < 0:
        raise InvalidArgument("version", f"must be 0 (the latest) or more, got {request.version}")
    if request.stage and request.key:
        raise InvalidArgument("key", "give a stage or a key, not both")
    if request.key:
        check_key(request.key, field="key")


def _version(
    job_id: str, versions: Sequence[orchestrator_pb2.Job], wanted: int
) -> orchestrator_pb2.Job:
    if wanted == 0:
        return versions[-1]
    for job in versions:
        if (job.version or 1) == wanted:  # rows written before reruns existed hold 0
            return job
    latest = versions[-1].version or 1
    raise NotFound(f"job {quote(job_id)} has no version {wanted} (versions 1 to {latest})")


def select_artifact(
    request: orchestrator_pb2.GetArtifactRequest, versions: Sequence[orchestrator_pb2.Job]
) -> common_pb2.ArtifactRef:
    """The artifact of `versions` (a job's, oldest first) that the request names."""
    job = _version(request.job_id, versions, request.version)
    what = f"job {job.job_id} version {job.version or 1}"
    state = orchestrator_pb2.JobState.Name(job.state)
    if request.key:
        refs = [job.final, *(run.output for run in job.stages)]
        for ref in refs:
            if ref.key == request.key:
                return ref
        raise NotFound(f"{request.key} is not an artifact of {what}")
    if request.stage:
        for run in job.stages:
            if run.stage == request.stage:
                if not run.HasField("output") or not run.output.key:
                    stage_state = orchestrator_pb2.StageState.Name(run.state)
                    raise FailedPrecondition(
                        f"stage {run.stage} of {what} has no output ({stage_state})"
                    )
                return run.output
        names = ", ".join(run.stage for run in job.stages)
        raise NotFound(f"{what} has no stage {quote(request.stage)}; its stages: {names}")
    if not job.HasField("final") or not job.final.key:
        raise FailedPrecondition(f"{what} has no final image ({state})")
    return job.final


def chunks(data: bytes, size: int | None = None) -> Iterator[bytes]:
    """`data` in pieces of at most `size` (default CHUNK_BYTES) bytes; one
    empty piece for no data."""
    size = size or CHUNK_BYTES
    if not data:
        yield b""
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]
