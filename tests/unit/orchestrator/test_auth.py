"""API keys and tenants through the real OrchestratorService on loopback gRPC:
every RPC scoped to the caller's tenant, UNAUTHENTICATED for a missing, wrong
or revoked key, one audit line per call, and key parsing and hashing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from stageflow.core.errors import InvalidArgument, Unauthenticated
from stageflow.orchestrator.auth import Authenticator, bearer, hash_key, new_key
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.servicer import OrchestratorServicer
from stageflow.orchestrator.store import JobStore
from stageflow.serving.interceptors import ErrorInterceptor
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import orchestrator_pb2_grpc
from tests.unit.orchestrator.fakes import FakeSettings, FakeStage

SECRET = "k" * 40
WAIT = 5.0


@dataclass
class Orchestrator:
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub
    jobs: JobStore
    acme: str
    globex: str


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def orch(jobs: JobStore) -> AsyncIterator[Orchestrator]:
    keys = {}
    for tenant in ("acme", "globex"):
        key, record = new_key(tenant, SECRET)
        await jobs.create_key(record)
        keys[tenant] = key
    fakes = {name: FakeStage(name) for name in ("base", "refine", "upscale")}
    runner = JobRunner(fakes, jobs, FakeSettings())
    servicer = OrchestratorServicer(runner, Authenticator(jobs, SECRET, enabled=True))
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Orchestrator(
        orchestrator_pb2_grpc.OrchestratorServiceStub(channel), jobs, keys["acme"], keys["globex"]
    )
    await channel.close()
    await server.stop(0)
    await runner.close()


async def _finished_job(o: Orchestrator, key: str) -> pb.Job:
    submitted = await o.stub.SubmitJob(
        pb.SubmitJobRequest(bundle=pb.PromptBundle(base="a castle"), width=64, height=64),
        metadata=_auth(key),
    )
    call = o.stub.WatchJob(
        pb.WatchJobRequest(job_id=submitted.job.job_id), metadata=_auth(key), timeout=WAIT
    )
    events = [e async for e in call]
    return events[-1].finished


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status of a failed unary call or stream."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return err.value.code(), err.value.details() or ""


async def test_another_tenants_job_is_not_found_on_every_rpc(orch: Orchestrator) -> None:
    job = await _finished_job(orch, orch.acme)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.tenant == "acme"
    other = _auth(orch.globex)
    unknown = (grpc.StatusCode.NOT_FOUND, "job 'job-0000000000000000' not found")
    calls = {
        "GetJob": lambda jid, md: orch.stub.GetJob(pb.GetJobRequest(job_id=jid), metadata=md),
        "WatchJob": lambda jid, md: orch.stub.WatchJob(pb.WatchJobRequest(job_id=jid), metadata=md),
        "CancelJob": lambda jid, md: orch.stub.CancelJob(
            pb.CancelJobRequest(job_id=jid), metadata=md
        ),
        "RerunJob": lambda jid, md: orch.stub.RerunJob(
            pb.RerunJobRequest(job_id=jid, from_stage="upscale"), metadata=md
        ),
        "GetArtifact": lambda jid, md: orch.stub.GetArtifact(
            pb.GetArtifactRequest(job_id=jid), metadata=md
        ),
    }
    for name, call in calls.items():
        code, message = await _code(call(job.job_id, other))
        # Exactly what an id that does not exist gets: nothing tells them apart.
        expected = await _code(call("job-0000000000000000", other))
        assert expected == unknown, name
        assert (code, message.replace(job.job_id, "job-0000000000000000")) == unknown, name
    # The owner still reads it, unchanged by the attempts.
    got = await orch.stub.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=_auth(orch.acme))
    assert got.job.state == pb.JOB_STATE_SUCCEEDED and got.job.version == 1


async def test_list_jobs_returns_only_the_callers_jobs(orch: Orchestrator) -> None:
    mine = await _finished_job(orch, orch.acme)
    theirs = await _finished_job(orch, orch.globex)
    listed = await orch.stub.ListJobs(pb.ListJobsRequest(), metadata=_auth(orch.acme))
    assert [j.job_id for j in listed.jobs] == [mine.job_id]
    listed = await orch.stub.ListJobs(pb.ListJobsRequest(), metadata=_auth(orch.globex))
    assert [j.job_id for j in listed.jobs] == [theirs.job_id]


async def test_same_request_id_in_two_tenants_makes_two_jobs(orch: Orchestrator) -> None:
    request = pb.SubmitJobRequest(
        bundle=pb.PromptBundle(base="a castle"), width=64, height=64, request_id="r1"
    )
    a = await orch.stub.SubmitJob(request, metadata=_auth(orch.acme))
    b = await orch.stub.SubmitJob(request, metadata=_auth(orch.globex))
    again = await orch.stub.SubmitJob(request, metadata=_auth(orch.acme))
    assert a.job.job_id != b.job.job_id and again.job.job_id == a.job.job_id


async def test_missing_wrong_and_revoked_keys_are_unauthenticated(orch: Orchestrator) -> None:
    request = pb.ListJobsRequest()
    bad = [
        (),
        (("authorization", "Basic abc"),),
        _auth("not-a-key"),
        _auth(orch.acme[:-1] + ("A" if orch.acme[-1] != "A" else "B")),  # one changed byte
    ]
    for metadata in bad:
        code, _ = await _code(orch.stub.ListJobs(request, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
    await orch.stub.ListJobs(request, metadata=_auth(orch.acme))
    key_id = orch.acme.split("_")[1]
    await orch.jobs.revoke_key(key_id, 1)
    # At once: no cache keeps a revoked key alive.
    code, message = await _code(orch.stub.ListJobs(request, metadata=_auth(orch.acme)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in message
    code, _ = await _code(
        orch.stub.WatchJob(pb.WatchJobRequest(job_id="job-x"), metadata=_auth(orch.acme))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_every_call_leaves_one_audit_line_without_the_key(orch: Orchestrator) -> None:
    with capture_logs() as logs:
        job = await _finished_job(orch, orch.acme)
        await _code(
            orch.stub.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=_auth(orch.globex))
        )
        await _code(orch.stub.ListJobs(pb.ListJobsRequest()))
    lines = [entry for entry in logs if entry["event"] == "audit"]
    acme_id, globex_id = orch.acme.split("_")[1], orch.globex.split("_")[1]
    assert [(e["tenant"], e["key_id"], e["action"], e["job_id"], e["outcome"]) for e in lines] == [
        ("acme", acme_id, "SubmitJob", job.job_id, "OK"),
        ("acme", acme_id, "WatchJob", job.job_id, "OK"),
        ("globex", globex_id, "GetJob", job.job_id, "NOT_FOUND"),
        ("", "", "ListJobs", "", "UNAUTHENTICATED"),
    ]
    assert not any(orch.acme in repr(e) or orch.globex in repr(e) for e in logs)


def test_keys_are_parsed_and_hashed_with_the_secret() -> None:
    key, record = new_key("acme", SECRET)
    assert key.startswith(f"sf_{record.key_id}_") and record.prefix == key[:15]
    assert record.key_hash == hash_key(SECRET, key) != hash_key("x" * 40, key)
    assert bearer([("authorization", f"Bearer {key}")]) == key
    assert bearer([("x-other", "1")]) == ""
    with pytest.raises(Unauthenticated):
        bearer([("authorization", key)])
    with pytest.raises(InvalidArgument, match="tenant"):
        new_key("Bad Tenant", SECRET)
    with pytest.raises(InvalidArgument, match="auth_secret_key"):
        Authenticator(None, "short", enabled=True)  # type: ignore[arg-type]


async def test_an_oversized_request_is_authenticated_first_then_rejected_and_audited(
    orch: Orchestrator,
) -> None:
    huge = pb.GetJobRequest(job_id="j" * 10_000)
    with capture_logs() as logs:
        code, _ = await _code(orch.stub.GetJob(huge))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, message = await _code(orch.stub.GetJob(huge, metadata=_auth(orch.acme)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith("job_id: must be at most 128 characters")
    lines = [(e["action"], len(e["job_id"]), e["outcome"]) for e in logs if e["event"] == "audit"]
    assert lines == [("GetJob", 128, "UNAUTHENTICATED"), ("GetJob", 128, "INVALID_ARGUMENT")]
