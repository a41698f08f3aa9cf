"""stageflow.client against a fake orchestrator on a real gRPC server: the status
-> exception mapping, settings from the environment, chunked downloads and
their digest check, option parsing, and the blocking facade."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from stageflow import client as client_pkg
from stageflow.client import (
    ClientSettings,
    DataLoss,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    StageflowClient,
    StageflowClientError,
    SyncStageflowClient,
    Unavailable,
    errors,
    options,
)
from stageflow.client.download import receive_artifact
from stageflow.v1 import common_pb2, stage_pb2
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.cli.fakes import FINAL_BYTES, FakeOrchestrator, ServerThread, carries_recipe

Fake = tuple[FakeOrchestrator, str]

# Every non-OK status and the class the client raises for it.
STATUS_CLASSES = [
    (grpc.StatusCode.CANCELLED, client_pkg.Cancelled),
    (grpc.StatusCode.UNKNOWN, client_pkg.Unknown),
    (grpc.StatusCode.INVALID_ARGUMENT, client_pkg.InvalidArgument),
    (grpc.StatusCode.DEADLINE_EXCEEDED, client_pkg.DeadlineExceeded),
    (grpc.StatusCode.NOT_FOUND, client_pkg.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, client_pkg.AlreadyExists),
    (grpc.StatusCode.PERMISSION_DENIED, client_pkg.PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, client_pkg.ResourceExhausted),
    (grpc.StatusCode.FAILED_PRECONDITION, client_pkg.FailedPrecondition),
    (grpc.StatusCode.ABORTED, client_pkg.Aborted),
    (grpc.StatusCode.OUT_OF_RANGE, client_pkg.OutOfRange),
    (grpc.StatusCode.UNIMPLEMENTED, client_pkg.Unimplemented),
    (grpc.StatusCode.INTERNAL, client_pkg.Internal),
    (grpc.StatusCode.UNAVAILABLE, client_pkg.Unavailable),
    (grpc.StatusCode.DATA_LOSS, client_pkg.DataLoss),
    (grpc.StatusCode.UNAUTHENTICATED, client_pkg.Unauthenticated),
]


def test_there_is_one_class_per_status_code() -> None:
    codes = [code for code, _ in STATUS_CLASSES]
    assert sorted(c.name for c in codes) == sorted(
        c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK
    )
    assert len({cls for _, cls in STATUS_CLASSES}) == len(STATUS_CLASSES)
    assert all(issubclass(cls, StageflowClientError) for _, cls in STATUS_CLASSES)
    assert dict(STATUS_CLASSES) == errors.ERRORS


class FailingOrchestrator(FakeOrchestrator):
    """GetJob and WatchJob end with `status`: a code and message, or a whole
    google.rpc.Status (rich details)."""

    def __init__(self) -> None:
        super().__init__()
        self.status: tuple[grpc.StatusCode, str] | status_pb2.Status = (
            grpc.StatusCode.INTERNAL,
            "unset",
        )

    async def _fail(self, context: grpc.aio.ServicerContext) -> None:
        if isinstance(self.status, status_pb2.Status):
            await context.abort_with_status(rpc_status.to_status(self.status))
        else:
            await context.abort(*self.status)

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResponse:
        await self._fail(context)
        raise AssertionError("abort raises")

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        yield pb.WatchJobResponse(job_id=request.job_id, snapshot=pb.Job(job_id=request.job_id))
        await self._fail(context)


@pytest.fixture(scope="module")
def failing() -> Iterator[tuple[FailingOrchestrator, str]]:
    servicer = FailingOrchestrator()
    with ServerThread(servicer) as server:
        yield servicer, server.address


@pytest.mark.parametrize(("code", "cls"), STATUS_CLASSES, ids=lambda v: getattr(v, "name", ""))
async def test_each_status_raises_its_class(
    failing: tuple[FailingOrchestrator, str], code: grpc.StatusCode, cls: type
) -> None:
    servicer, address = failing
    servicer.status = (code, f"went {code.name.lower()}")
    async with StageflowClient(address) as client:
        with pytest.raises(StageflowClientError) as caught:
            await client.get("job-1")
        assert type(caught.value) is cls
        assert caught.value.code == code and caught.value.status == code.name
        assert caught.value.message == f"went {code.name.lower()}"
        assert str(caught.value) == f"{code.name}: went {code.name.lower()}"
        assert caught.value.field_violations == () and caught.value.field == ""
        # Streams too: the error after the first event is the same class.
        events = []
        with pytest.raises(cls):
            async for event in client.watch("job-1"):
                events.append(event.WhichOneof("event"))
        assert events == ["snapshot"]


def bad_request(*violations: tuple[str, str]) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="refine.strength: must be in [0, 1]",
        details=[detail],
    )


async def test_field_violations_come_from_the_rich_status(
    failing: tuple[FailingOrchestrator, str],
) -> None:
    servicer, address = failing
    servicer.status = bad_request(
        ("refine.strength", "must be in [0, 1], got 3"), ("width", "must be a multiple of 8")
    )
    async with StageflowClient(address) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.get("job-1")
    assert caught.value.message == "refine.strength: must be in [0, 1]"
    assert caught.value.field_violations == (
        FieldViolation("refine.strength", "must be in [0, 1], got 3"),
        FieldViolation("width", "must be a multiple of 8"),
    )
    assert caught.value.field == "refine.strength"


def test_from_rpc_error_reads_the_trailing_status_of_an_aio_error() -> None:
    status = bad_request(("seed", "must be >= 0"))
    err = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )
    converted = errors.from_rpc_error(err)
    assert isinstance(converted, InvalidArgument)
    assert converted.field_violations == (FieldViolation("seed", "must be >= 0"),)
    # Undecodable details are ignored, not fatal; a missing message gets the code's words.
    junk = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\xff")),
    )
    converted = errors.from_rpc_error(junk)
    assert isinstance(converted, NotFound)
    assert converted.field_violations == () and converted.message == "not found"


async def test_unreachable_orchestrator_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with StageflowClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(Unavailable):
            await client.list()


# -- settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "address", "timeout"),
    [
        ({}, "127.0.0.1:50051", 30.0),
        ({"STAGEFLOW_ADDRESS": ""}, "127.0.0.1:50051", 30.0),
        ({"STAGEFLOW_ADDRESS": " orch.internal:7000 "}, "orch.internal:7000", 30.0),
        ({"STAGEFLOW_ADDRESS": "dns:///orch:50051"}, "dns:///orch:50051", 30.0),
        ({"STAGEFLOW_CLIENT_TIMEOUT_SECONDS": "2.5"}, "127.0.0.1:50051", 2.5),
    ],
)
def test_settings_from_env(env: dict[str, str], address: str, timeout: float) -> None:
    settings = ClientSettings.from_env(env)
    assert (settings.address, settings.timeout_seconds) == (address, timeout)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"STAGEFLOW_CLIENT_TIMEOUT_SECONDS": "soon"}, "STAGEFLOW_CLIENT_TIMEOUT_SECONDS"),
        ({"STAGEFLOW_CLIENT_TIMEOUT_SECONDS": "-1"}, "STAGEFLOW_CLIENT_TIMEOUT_SECONDS"),
        ({"STAGEFLOW_CLIENT_TIMEOUT_SECONDS": "nan"}, "STAGEFLOW_CLIENT_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ClientSettings.from_env(env)
    assert caught.value.field == field


def test_bad_settings_fields_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        ClientSettings(address=" ")
    assert caught.value.field == "address"
    with pytest.raises(InvalidArgument) as caught:
        ClientSettings(max_message_bytes=4096)
    assert caught.value.field == "max_message_bytes"


async def test_client_takes_its_address_from_the_environment(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = fake
    monkeypatch.setenv("STAGEFLOW_ADDRESS", address)
    async with StageflowClient() as client:
        assert client.address == address
        job = await client.submit(base="hero")
    assert servicer.submits[0].bundle.base == "hero" and job.job_id == "job-1"
    assert StageflowClient("other:1").address == "other:1"  # the argument wins


# -- downloads --------------------------------------------------------------------


async def finished(client: StageflowClient) -> pb.Job:
    job = await client.submit(base="hero", style="cinematic")
    events = [e async for e in client.watch(job.job_id)]
    return events[-1].finished


async def test_download_assembles_the_chunks_and_verifies_them(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    assert len(FINAL_BYTES) > 3 * servicer.chunk_bytes  # several messages
    async with StageflowClient(address) as client:
        job = await finished(client)
        assert await client.download(job.job_id) == FINAL_BYTES
        assert await client.download(job.job_id, stage="upscale", version=1) == FINAL_BYTES
        assert await client.download(job.job_id, key=job.final.key) == FINAL_BYTES
        target = tmp_path / "nested" / "final.png"
        assert await client.fetch_final(job, path=target, with_recipe=False) == FINAL_BYTES
        assert target.read_bytes() == FINAL_BYTES
        # By default the final carries its recipe, inserted before IEND.
        assert carries_recipe(await client.fetch_final(job), job.job_id)
        with pytest.raises(NotFound):
            await client.download(job.job_id, stage="base")  # the fake's base has no output
        with pytest.raises(NotFound):
            await client.download("job-nope")
    sent = servicer.artifact_requests
    assert (sent[1].stage, sent[1].version) == ("upscale", 1)
    assert (sent[3].key, sent[3].version) == (job.final.key, 1)  # fetch_final names its version


async def test_corrupted_download_is_data_loss_and_writes_nothing(
    fake: Fake, tmp_path: Path
) -> None:
    servicer, address = fake
    async with StageflowClient(address) as client:
        job = await finished(client)
        servicer.outcome = "bad_digest"
        target = tmp_path / "final.png"
        with pytest.raises(DataLoss, match=r"final image of job job-1: sha256 is [0-9a-f]{64}"):
            await client.fetch_final(job, path=target)
        with pytest.raises(DataLoss, match="sha256 is"):
            await client.download(job.job_id, stage="upscale")
    assert os.listdir(tmp_path) == []  # no file, no partial file


async def test_fetch_final_checks_the_jobs_own_digest(fake: Fake) -> None:
    _, address = fake
    async with StageflowClient(address) as client:
        job = await finished(client)
        job.final.sha256 = hashlib.sha256(b"what the job recorded").hexdigest()
        with pytest.raises(DataLoss, match="expected " + job.final.sha256):
            await client.fetch_final(job)


async def test_fetch_final_of_unfinished_job_makes_no_call(fake: Fake) -> None:
    servicer, address = fake
    async with StageflowClient(address) as client:
        with pytest.raises(FailedPrecondition, match="no final image"):
            await client.fetch_final(pb.Job(job_id="j", state=pb.JOB_STATE_RUNNING))
    assert servicer.artifact_requests == []


def chunk(data: bytes, artifact: common_pb2.ArtifactRef | None = None) -> pb.GetArtifactResponse:
    return pb.GetArtifactResponse(artifact=artifact, data=data)


async def stream(*responses: pb.GetArtifactResponse) -> AsyncIterator[pb.GetArtifactResponse]:
    for response in responses:
        yield response


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ((), "ended without a message"),
        ((chunk(b"abc"),), "first message carries no artifact ref"),
        (
            (chunk(b"ab", common_pb2.ArtifactRef(size_bytes=3, sha256="0" * 64)),),
            "received 2 bytes, the artifact has 3",
        ),
        ((chunk(b"ab", common_pb2.ArtifactRef(size_bytes=2)),), "names no sha256"),
    ],
)
async def test_malformed_streams_are_data_loss(
    responses: tuple[pb.GetArtifactResponse, ...], message: str
) -> None:
    with pytest.raises(DataLoss, match=message):
        await receive_artifact(stream(*responses), "the artifact")


async def test_an_empty_artifact_is_one_empty_message() -> None:
    ref = common_pb2.ArtifactRef(key="k", sha256=hashlib.sha256(b"").hexdigest())
    assert await receive_artifact(stream(chunk(b"", ref)), "empty") == (ref, b"")


# -- options, and the blocking client -----------------------------------------------


def test_options_take_short_enum_names_and_nested_boxes() -> None:
    refine = options(
        pb.RefineOptions,
        {"mode": "inpaint", "strength": 0.4, "mask_box": {"top": 0.8, "bottom": 1.0}},
    )
    assert refine.mode == stage_pb2.REFINE_MODE_INPAINT
    assert refine.mask_box.top == pytest.approx(0.8)
    assert options(pb.UpscaleOptions, {"mode": "UPSCALE_MODE_LANCZOS"}).mode == 2
    assert not options(pb.BaseOptions, None).HasField("steps")


def test_options_reject_unknown_fields_and_values() -> None:
    with pytest.raises(InvalidArgument) as caught:
        options(pb.BaseOptions, {"stepz": 3})
    assert caught.value.field == "BaseOptions" and "stepz" in caught.value.message
    with pytest.raises(InvalidArgument):
        options(pb.UpscaleOptions, {"mode": "bicubic"})


def test_sync_client_round_trip(fake: Fake, tmp_path: Path) -> None:
    servicer, address = fake
    with SyncStageflowClient(address) as client:
        job = client.submit(base="hero", style="cinematic", upscale_options={"mode": "lanczos"})
        events = [e.WhichOneof("event") for e in client.watch(job.job_id)]
        assert events[0] == "snapshot" and events[-1] == "finished"
        done = client.get(job.job_id)
        assert done.state == pb.JOB_STATE_SUCCEEDED
        assert carries_recipe(client.fetch_final(done), job.job_id)
        assert client.download(job.job_id, path=tmp_path / "f.png") == FINAL_BYTES
        assert (tmp_path / "f.png").read_bytes() == FINAL_BYTES
        assert [j.job_id for j in client.list(state="succeeded")] == [job.job_id]
        with pytest.raises(NotFound, match="job 'nope' not found"):
            client.get("nope")
    assert servicer.submits[0].upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
