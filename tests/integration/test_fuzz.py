"""Generated hostile requests for every RPC of every service, over real processes.

Hypothesis builds messages from the protos' descriptors: every field maybe
set, strings short, unicode, with newlines or oversized, numbers at their
limits, NaN and infinities, enum numbers nobody declared (negative ones too),
repeated fields with tens of thousands of entries, Structs nested or huge,
and unknown fields appended to the wire bytes. Each request goes to the real
stage or orchestrator process as raw bytes. Every answer must be OK or a
deliberate status (never UNKNOWN or INTERNAL, never a transport failure),
come within a time bound, and carry a short message; the servers stay
SERVING; a rejected request stores no job, no version and no artifact.

The example budget is fixed and the generation derandomized, so a run is
reproducible (CI sees the same requests every time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.storage import LocalStore
from stageflow.v1 import orchestrator_pb2, stage_pb2

pytestmark = pytest.mark.integration

S = orchestrator_pb2
# Examples per RPC: fixed, so the suite's length and its requests are fixed.
EXAMPLES = 25
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,  # the bound below is per call, on the server's answer
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Seconds an answer may take (a stage Run with a valid request may run the
# model: it gets RUN_DEADLINE and must honour it).
ANSWER_SECONDS = 10.0
RUN_DEADLINE = 3.0
SLACK = 3.0
# The statuses a server gives on purpose. DEADLINE_EXCEEDED only for a stage
# Run whose (short) deadline the stage honoured.
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,  # a share token whose signature does not match
}
REJECTED = DELIBERATE - {grpc.StatusCode.OK}
MAX_MESSAGE_CHARS = 1100

STAGE_NAMES = ("base", "refine", "upscale")


# -- strategies: any message, from its descriptor ---------------------------------

_WORDS = st.sampled_from(
    ["base", "refine", "upscale", "default", "hero", "Chapter One", "tiny-sd", "", " ", "\n"]
)
_TEXT = st.one_of(
    _WORDS,
    _WORDS,
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.integers(201, 3000).map(lambda n: "x" * n),
    st.sampled_from([10_000, 300_000]).map(lambda n: "y" * n),  # far past every maximum
)
_INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 8, 32, 64, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)
_INT64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
_FLOAT = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 0.3, -1.0, math.nan, math.inf, -math.inf, 1e38, 1e-45]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
_DOUBLE = st.one_of(_FLOAT, st.floats(allow_nan=True, allow_infinity=True))
# Declared values most of the time (so the checks behind them run too), else
# numbers no enum declares.
_ENUM = st.one_of(
    st.integers(0, 2),
    st.integers(0, 3),
    st.sampled_from([-1, 42, 77, 99, -(2**31), 2**31 - 1]),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _DOUBLE, _TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _struct(draw: st.DrawFn) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if draw(st.booleans()) and draw(st.booleans()):
        out.update({f"k{i}": i for i in range(draw(st.sampled_from([65, 5000])))})
    else:
        out.update(draw(st.dictionaries(_TEXT, _JSON, max_size=4)))
    return out


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    kinds: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: _TEXT,
        FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_INT32: _INT32,
        FieldDescriptor.TYPE_INT64: _INT64,
        FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
        FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
        FieldDescriptor.TYPE_FLOAT: _FLOAT,
        FieldDescriptor.TYPE_DOUBLE: _DOUBLE,
        FieldDescriptor.TYPE_ENUM: _ENUM,
    }
    return kinds[fd.type]


def _is_map(fd: FieldDescriptor) -> bool:
    message = fd.message_type
    return message is not None and message.GetOptions().map_entry


@st.composite
def message(draw: st.DrawFn, descriptor: Any, depth: int = 0) -> Message:
    """Any message of `descriptor`'s type: each field maybe set, to anything its type holds."""
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        msg.CopyFrom(draw(_struct()))
        return msg
    # One member of each real oneof (RunRequest.params, WatchJobResponse.event)
    # at most, as a sender would set it; proto3 `optional` fields are oneofs
    # of one member.
    chosen = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields]))
        for oneof in descriptor.oneofs
        if len(oneof.fields) > 1
    }
    fd: Any  # the stubs type descriptors as the python or the upb implementation
    for fd in descriptor.fields:
        oneof = fd.containing_oneof
        if oneof is not None and oneof.name in chosen:
            if chosen[oneof.name] is not fd:
                continue
        elif draw(st.integers(0, 2)):  # each field set one time in three
            continue
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            keys = draw(
                st.one_of(
                    st.lists(_TEXT, max_size=3),
                    st.just([f"s{i}" for i in range(20)]),  # more entries than allowed
                )
            )
            target = getattr(msg, fd.name)
            for key in keys:
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(draw(message(value_fd.message_type, depth + 1)))
                else:
                    target[key] = draw(_scalar(value_fd))
            continue
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                items = draw(st.lists(message(fd.message_type, depth + 1), max_size=3))
                getattr(msg, fd.name).extend(items)
            else:
                huge = draw(st.booleans()) and draw(st.booleans())
                if huge:  # the 25,000-entry list that once froze the event loop
                    # Short entries: the count is the point (and memory stays small).
                    short = _WORDS if fd.type == FieldDescriptor.TYPE_STRING else _scalar(fd)
                    one = draw(short)
                    getattr(msg, fd.name).extend([one] * draw(st.sampled_from([25_000, 50_000])))
                else:
                    getattr(msg, fd.name).extend(draw(st.lists(_scalar(fd), max_size=4)))
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 4:
                getattr(msg, fd.name).CopyFrom(draw(message(fd.message_type, depth + 1)))
            continue
        setattr(msg, fd.name, draw(_scalar(fd)))
    return msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields no proto declares, on the wire: varints and length-delimited blobs."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(100, 2**29 - 1))
        if draw(st.booleans()):
            out += _varint(number << 3) + _varint(draw(st.integers(0, 2**64 - 1)))
        else:
            blob = draw(st.binary(max_size=32)) * draw(st.sampled_from([1, 1, 1000]))
            out += _varint(number << 3 | 2) + _varint(len(blob)) + blob
    return out


@st.composite
def wire(draw: st.DrawFn, descriptor: Any) -> tuple[Message, bytes]:
    """A generated request, and unknown fields to append to its wire bytes."""
    return draw(message(descriptor)), draw(unknown_fields())


# -- the servers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("fuzz-cluster")
    with LocalCluster(state_dir=state, models_dir=fixture_models, torch_threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def finished_job(cluster: LocalCluster) -> S.Job:
    """One succeeded job: ids the generated requests may name."""
    import asyncio

    async def run() -> S.Job:
        async with StageflowClient(cluster.orchestrator_address) as client:
            job = await client.submit(base="a red circle", style="", width=32, height=32)
            async for event in client.watch(job.job_id):
                if event.HasField("finished"):
                    return event.finished
        raise AssertionError("the watch ended early")

    job = asyncio.run(run())
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    return job


@pytest.fixture(scope="module")
def channels(cluster: LocalCluster) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        name: grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        for name, address in cluster.addresses.items()
    }
    yield opened
    for channel in opened.values():
        channel.close()


def _identity(data: bytes) -> bytes:
    return data


def _method(service: Any, name: str) -> str:
    return f"/{service.full_name}/{name}"


def call(
    channel: grpc.Channel,
    path: str,
    payload: bytes,
    *,
    stream: bool,
    timeout: float,
    client_stream: bool = False,
) -> tuple[grpc.StatusCode, str, float, bytes]:
    """Send raw bytes (twice, as a stream of two messages, for a client-streaming
    RPC); the status, its message and the seconds it took. A response stream
    is read to its end (at most 3 messages: a watch of a running job answers
    with its snapshot first). The unary answer's bytes come last."""
    started = time.monotonic()
    answer = b""
    try:
        if client_stream:
            answer = channel.stream_unary(
                path, request_serializer=_identity, response_deserializer=_identity
            )(iter([payload, payload]), timeout=timeout)
        elif stream:
            responses = channel.unary_stream(
                path, request_serializer=_identity, response_deserializer=_identity
            )(payload, timeout=timeout)
            for i, _ in enumerate(responses):
                if i >= 2:
                    responses.cancel()
                    break
        else:
            answer = channel.unary_unary(
                path, request_serializer=_identity, response_deserializer=_identity
            )(payload, timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.CANCELLED and stream:  # our own cancel after 3 messages
            return grpc.StatusCode.OK, "", time.monotonic() - started, b""
        return code, err.details() or "", time.monotonic() - started, b""
    return grpc.StatusCode.OK, "", time.monotonic() - started, answer


def check_answer(
    what: str, code: grpc.StatusCode, message: str, took: float, *, bound: float,
    deadline_ok: bool = False,
) -> None:  # fmt: skip
    allowed = DELIBERATE | ({grpc.StatusCode.DEADLINE_EXCEEDED} if deadline_ok else set())
    assert code in allowed, f"{what}: {code.name}: {message[:300]}"
    assert took < bound, f"{what}: answered after {took:.1f}s"
    assert len(message) <= MAX_MESSAGE_CHARS, f"{what}: a {len(message)}-character message"


def assert_serving(channels: dict[str, grpc.Channel]) -> None:
    for name, channel in channels.items():
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


# -- the stages ----------------------------------------------------------------------

STAGE_SERVICE = stage_pb2.DESCRIPTOR.services_by_name["StageService"]
ADMIN_SERVICE = stage_pb2.DESCRIPTOR.services_by_name["StageAdminService"]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_run_answers_every_request_deliberately(
    stage: str, cluster: LocalCluster, channels: dict[str, grpc.Channel]
) -> None:
    store = LocalStore(cluster.state_dir / "store")
    path = _method(STAGE_SERVICE, "Run")

    @FUZZ
    @given(request=wire(stage_pb2.RunRequest.DESCRIPTOR))
    def one(request: tuple[Message, bytes]) -> None:
        before = set(store.list_keys())
        payload = request[0].SerializeToString() + request[1]
        code, message, took, _answer = call(
            channels[stage], path, payload, stream=True, timeout=RUN_DEADLINE
        )
        check_answer(
            f"{stage} Run", code, message, took, bound=RUN_DEADLINE + SLACK, deadline_ok=True
        )
        if code in REJECTED:
            assert set(store.list_keys()) == before, f"a rejected Run wrote: {message[:200]}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            time.sleep(0.5)  # let a cancelled call wind down before the next snapshot

    one()
    assert_serving(channels)


@pytest.mark.parametrize(
    ("service", "method", "request_type"),
    [
        (STAGE_SERVICE, "Describe", stage_pb2.DescribeRequest),
        (ADMIN_SERVICE, "LoadModel", stage_pb2.LoadModelRequest),
    ],
)
def test_stage_describe_and_admin_answer_deliberately(
    service: Any, method: str, request_type: type[Message], channels: dict[str, grpc.Channel]
) -> None:
    path = _method(service, method)

    @FUZZ
    @given(request=wire(request_type.DESCRIPTOR), stage=st.sampled_from(STAGE_NAMES))
    def one(request: tuple[Message, bytes], stage: str) -> None:
        payload = request[0].SerializeToString() + request[1]
        code, message, took, _answer = call(
            channels[stage], path, payload, stream=False, timeout=ANSWER_SECONDS
        )
        check_answer(f"{stage} {method}", code, message, took, bound=ANSWER_SECONDS)

    one()
    assert_serving(channels)


# -- the orchestrator ----------------------------------------------------------------

ORCHESTRATOR_SERVICE = S.DESCRIPTOR.services_by_name["OrchestratorService"]


def _aimed(descriptor: Any, finished: S.Job) -> Callable[[Message], Message]:
    """Point a generated request's job id at the real job half of the time, so
    the checks behind the lookup are fuzzed too."""

    def aim(msg: Any) -> Message:
        if "job_id" in descriptor.fields_by_name and len(msg.job_id) % 2:
            msg.job_id = finished.job_id
        return msg

    return aim


def _ids(channel: grpc.Channel) -> tuple[set[str], bool]:
    """The ids of every job, and whether any is still queued or running."""
    reply = S.ListJobsResponse.FromString(
        channel.unary_unary(
            _method(ORCHESTRATOR_SERVICE, "ListJobs"),
            request_serializer=_identity,
            response_deserializer=_identity,
        )(S.ListJobsRequest(page_size=1000).SerializeToString(), timeout=ANSWER_SECONDS)
    )
    busy = any(job.state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING) for job in reply.jobs)
    return {job.job_id for job in reply.jobs}, busy


def _versions(channel: grpc.Channel, job_id: str) -> int:
    reply = S.GetJobResponse.FromString(
        channel.unary_unary(
            _method(ORCHESTRATOR_SERVICE, "GetJob"),
            request_serializer=_identity,
            response_deserializer=_identity,
        )(S.GetJobRequest(job_id=job_id).SerializeToString(), timeout=ANSWER_SECONDS)
    )
    return len(reply.versions)


@pytest.mark.parametrize("method", [m.name for m in ORCHESTRATOR_SERVICE.methods])
def test_every_orchestrator_rpc_answers_deliberately(
    method: str,
    cluster: LocalCluster,
    channels: dict[str, grpc.Channel],
    finished_job: S.Job,
) -> None:
    channel = channels["orchestrator"]
    store = LocalStore(cluster.state_dir / "store")
    rpc = ORCHESTRATOR_SERVICE.methods_by_name[method]
    path = _method(ORCHESTRATOR_SERVICE, method)
    aim = _aimed(rpc.input_type, finished_job)

    @FUZZ
    @given(request=wire(rpc.input_type))
    def one(request: tuple[Message, bytes]) -> None:
        msg, extra = request
        aim(msg)
        if method == "SubmitJob":
            # Most generated jobs are only checked: a valid one that runs
            # would keep the stages busy for the rest of the suite.
            assert isinstance(msg, S.SubmitJobRequest)
            msg.validate_only = msg.validate_only or len(extra) % 5 != 0 or msg.seed % 3 != 0
            if msg.priority == S.PRIORITY_INTERACTIVE:
                msg.priority = S.PRIORITY_BULK
        payload = msg.SerializeToString() + extra
        writes = method in ("SubmitJob", "RerunJob", "UploadImage")
        jobs_before, busy = _ids(channel) if writes else (set(), True)
        keys_before = set(store.list_keys()) if writes and not busy else set()
        versions_before = _versions(channel, finished_job.job_id) if method == "RerunJob" else 0
        code, message, took, answer = call(
            channel,
            path,
            payload,
            stream=rpc.server_streaming,
            client_stream=rpc.client_streaming,
            timeout=ANSWER_SECONDS,
        )
        check_answer(method, code, message, took, bound=ANSWER_SECONDS)
        if code in REJECTED and writes:
            jobs_after, busy_after = _ids(channel)
            assert jobs_after == jobs_before, f"a rejected {method} stored a job"
            if not busy and not busy_after:  # no job of an earlier example is writing
                assert set(store.list_keys()) == keys_before, f"a rejected {method} wrote"
        if code in REJECTED and method == "RerunJob":
            assert _versions(channel, finished_job.job_id) == versions_before
        if code == grpc.StatusCode.OK and method in ("SubmitJob", "RerunJob"):
            # A stored job can always be read back, in one message.
            job = S.SubmitJobResponse.FromString(answer).job
            if job.job_id:  # validate_only stores nothing
                _versions(channel, job.job_id)

    one()
    assert_serving(channels)


def test_the_fuzzed_jobs_are_cancelled(
    cluster: LocalCluster, channels: dict[str, grpc.Channel]
) -> None:
    """Leave nothing running (the jobs a valid generated submit or rerun started)."""
    import asyncio

    async def cancel_all() -> None:
        async with StageflowClient(cluster.orchestrator_address) as client:
            for job in await client.list(page_size=1000):
                if job.state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING):
                    await client.cancel(job.job_id)

    asyncio.run(cancel_all())
    assert_serving(channels)
