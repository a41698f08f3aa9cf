"""GetArtifact: which artifact a request names, and the servicer streaming it in
chunks over real gRPC (in process) from a real local store."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from stageflow.core.artifacts import put_artifact
from stageflow.core.errors import FailedPrecondition, InvalidArgument, NotFound, StageflowError
from stageflow.core.storage import LocalStore
from stageflow.orchestrator import artifacts
from stageflow.orchestrator.artifacts import check_artifact_request, chunks, select_artifact
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.servicer import OrchestratorServicer
from stageflow.orchestrator.sqlite_store import SqliteJobStore
from stageflow.serving.interceptors import ErrorInterceptor
from stageflow.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc, stage_pb2
from tests.unit.orchestrator.fakes import FakeSettings

pb = orchestrator_pb2
WAIT = 5.0


def ref(key: str) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(key=key, sha256=hashlib.sha256(key.encode()).hexdigest())


def run(stage: str, key: str = "") -> pb.StageRun:
    state = pb.STAGE_STATE_SUCCEEDED if key else pb.STAGE_STATE_PENDING
    return pb.StageRun(stage=stage, state=state, output=ref(key) if key else None)


V1 = pb.Job(
    job_id="job-a",
    version=1,
    state=pb.JOB_STATE_SUCCEEDED,
    stages=[run("base", "a/base1"), run("refine", "a/refine1"), run("upscale", "a/up1")],
    final=ref("a/up1"),
)
# Rerun from refine: base's output is reused, refine and upscale are new ... and
# still running, so there is no final yet and upscale has no output.
V2 = pb.Job(
    job_id="job-a",
    version=2,
    state=pb.JOB_STATE_RUNNING,
    stages=[run("base", "a/base1"), run("refine", "a/refine2"), run("upscale")],
)
VERSIONS = [V1, V2]


@pytest.mark.parametrize(
    ("version", "stage", "key", "expected"),
    [
        (1, "", "", "a/up1"),  # the final image
        (1, "base", "", "a/base1"),
        (1, "refine", "", "a/refine1"),
        (0, "refine", "", "a/refine2"),  # 0: the latest version
        (2, "base", "", "a/base1"),  # reused from version 1, still version 2's
        (1, "", "a/refine1", "a/refine1"),
        (2, "", "a/base1", "a/base1"),
    ],
)
def test_select_artifact(version: int, stage: str, key: str, expected: str) -> None:
    request = pb.GetArtifactRequest(job_id="job-a", version=version, stage=stage, key=key)
    check_artifact_request(request)
    assert select_artifact(request, VERSIONS).key == expected


@pytest.mark.parametrize(
    ("version", "stage", "key", "error", "message"),
    [
        (3, "", "", NotFound, "job 'job-a' has no version 3 (versions 1 to 2)"),
        (1, "typography", "", NotFound, "has no stage 'typography'; its stages: base, refine"),
        (2, "", "a/refine1", NotFound, "a/refine1 is not an artifact of job job-a version 2"),
        (1, "", "other/object", NotFound, "other/object is not an artifact"),
        (0, "", "", FailedPrecondition, "job job-a version 2 has no final image (JOB_STATE_RUN"),
        (2, "upscale", "", FailedPrecondition, "stage upscale of job job-a version 2 has no out"),
    ],
)
def test_select_artifact_errors(
    version: int, stage: str, key: str, error: type[StageflowError], message: str
) -> None:
    request = pb.GetArtifactRequest(job_id="job-a", version=version, stage=stage, key=key)
    with pytest.raises(error) as caught:
        select_artifact(request, VERSIONS)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "job_id"),
        ({"job_id": "j", "version": -1}, "version"),
        ({"job_id": "j", "stage": "base", "key": "a/b"}, "key"),
        ({"job_id": "j", "key": "../secrets"}, "key"),
        ({"job_id": "j", "key": "/etc/passwd"}, "key"),
    ],
)
def test_bad_requests_name_the_field(request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_artifact_request(pb.GetArtifactRequest(**request_fields))  # type: ignore[arg-type]
    assert caught.value.field == field


def test_chunks_cover_the_data_in_order() -> None:
    data = bytes(range(256)) * 5
    pieces = list(chunks(data, 300))
    assert [len(p) for p in pieces] == [300, 300, 300, 300, 80]
    assert b"".join(pieces) == data
    assert list(chunks(b"", 300)) == [b""]


class StoringStage:
    """A stage that writes a real artifact per call (distinct bytes per stage and call)."""

    def __init__(self, name: str, store: LocalStore) -> None:
        self.name, self.store, self.calls = name, store, 0

    async def run(
        self,
        request: stage_pb2.RunRequest,
        *,
        timeout: float | None,  # noqa: ASYNC109 -- the StageClient signature
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[stage_pb2.RunResponse]:
        self.calls += 1
        data = f"{self.name} output {self.calls} ".encode() * 50
        art = put_artifact(self.store, data, media_type="image/png")
        output = common_pb2.ArtifactRef(
            key=art.key, sha256=art.sha256, size_bytes=art.size_bytes, media_type=art.media_type
        )
        yield stage_pb2.RunResponse(result=stage_pb2.StageResult(output=output))

    async def describe(self) -> stage_pb2.DescribeResponse:
        from stageflow.orchestrator.stage_client import StageCallError

        raise StageCallError("UNAVAILABLE", "not described in this test")

    async def close(self) -> None:
        pass


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[orchestrator_pb2_grpc.OrchestratorServiceStub, LocalStore]]:
    store = LocalStore(tmp_path / "store")
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite")
    stages = {name: StoringStage(name, store) for name in ("base", "refine", "upscale")}
    runner = JobRunner(stages, jobs, FakeSettings(), store)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
        OrchestratorServicer(runner), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel), store
    await channel.close()
    await server.stop(0)
    await runner.close()
    await jobs.close()


async def finished_job(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> pb.Job:
    submitted = await stub.SubmitJob(
        pb.SubmitJobRequest(bundle=pb.PromptBundle(base="a castle"), width=64, height=64)
    )
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=submitted.job.job_id), timeout=WAIT)
    events = [e async for e in watch]
    assert events[-1].finished.state == pb.JOB_STATE_SUCCEEDED
    return events[-1].finished


async def test_get_artifact_streams_chunks_with_the_ref_first(
    served: tuple[orchestrator_pb2_grpc.OrchestratorServiceStub, LocalStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, store = served
    monkeypatch.setattr(artifacts, "CHUNK_BYTES", 256)
    job = await finished_job(stub)
    for stage, expected in (("", job.final), ("base", job.stages[0].output)):
        call = stub.GetArtifact(pb.GetArtifactRequest(job_id=job.job_id, stage=stage), timeout=WAIT)
        replies = [r async for r in call]
        assert await call.code() == grpc.StatusCode.OK
        assert replies[0].artifact == expected
        assert not any(r.HasField("artifact") for r in replies[1:])
        data = b"".join(r.data for r in replies)
        assert all(len(r.data) <= 256 for r in replies) and len(replies) > 1
        assert data == store.get(expected.key)
        assert hashlib.sha256(data).hexdigest() == expected.sha256


async def test_get_artifact_errors_carry_their_status(
    served: tuple[orchestrator_pb2_grpc.OrchestratorServiceStub, LocalStore],
) -> None:
    stub, store = served
    job = await finished_job(stub)

    async def status_of(**fields: object) -> tuple[grpc.StatusCode, str, list[str]]:
        call = stub.GetArtifact(pb.GetArtifactRequest(**fields), timeout=WAIT)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        status = rpc_status.from_call(caught.value)
        fields_named = []
        for detail in status.details if status is not None else ():
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields_named += [v.field for v in bad.field_violations]
        return caught.value.code(), caught.value.details() or "", fields_named

    code, _, named = await status_of(job_id=job.job_id, stage="base", key=job.final.key)
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, ["key"])
    code, _, named = await status_of(version=1)
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, ["job_id"])
    code, details, _ = await status_of(job_id="job-nope")
    assert code == grpc.StatusCode.NOT_FOUND and "job-nope" in details
    code, details, _ = await status_of(job_id=job.job_id, version=2)
    assert code == grpc.StatusCode.NOT_FOUND and "no version 2" in details
    code, details, _ = await status_of(job_id=job.job_id, stage="typography")
    assert code == grpc.StatusCode.NOT_FOUND and "typography" in details

    # The stored bytes of the final image are replaced: the orchestrator refuses them.
    store.put(job.final.key, b"something else")
    code, details, _ = await status_of(job_id=job.job_id)
    assert code == grpc.StatusCode.DATA_LOSS and "sha256 mismatch" in details
