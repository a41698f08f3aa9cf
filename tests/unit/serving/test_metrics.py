"""Per-call metrics from TelemetryInterceptor, object-store metrics from
InstrumentedStore, and the JSON-lines span exporter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import REGISTRY

from stageflow.core.errors import NotFound
from stageflow.core.storage import LocalStore
from stageflow.serving.channels import client_channel
from stageflow.serving.interceptors import ErrorInterceptor, TelemetryInterceptor
from stageflow.serving.metrics import metrics_port_file, start_metrics_server
from stageflow.serving.server import serve
from stageflow.serving.settings import CommonSettings
from stageflow.serving.stores import InstrumentedStore, open_store
from stageflow.serving.tracing import JOB_ID, JsonlSpanExporter, _JobIdProcessor

SERVICE = "unit-metrics"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def counted(name: str, expected: float, **labels: str) -> None:
    """Wait up to 5 s for a metric to reach `expected`; fail with what it is."""
    for _ in range(500):
        if sample(name, **labels) == expected:
            return
        await asyncio.sleep(0.01)
    assert sample(name, **labels) == expected


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("no such thing")
    return b"ok"


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


def _identity(x: bytes) -> bytes:
    return x


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[TelemetryInterceptor(SERVICE), ErrorInterceptor()])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("m.Svc", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with client_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


async def test_calls_are_counted_by_status_code(channel: grpc.aio.Channel) -> None:
    method = "/m.Svc/Unary"
    labels = {"service": SERVICE, "method": method}
    ok_before = sample("stageflow_rpc_requests_total", code="OK", **labels)
    missing_before = sample("stageflow_rpc_requests_total", code="NOT_FOUND", **labels)
    hist_before = sample("stageflow_rpc_duration_seconds_count", code="OK", **labels)

    assert await channel.unary_unary(method)(b"x") == b"ok"
    assert await channel.unary_unary(method)(b"x") == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(method)(b"missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # The server records a call after its status is on the wire, so the client
    # can see the status first: wait (bounded) for the count, never sleep blindly.
    await counted("stageflow_rpc_requests_total", ok_before + 2, code="OK", **labels)
    await counted("stageflow_rpc_requests_total", missing_before + 1, code="NOT_FOUND", **labels)
    await counted("stageflow_rpc_duration_seconds_count", hist_before + 2, code="OK", **labels)
    assert sample("stageflow_rpc_in_flight", **labels) == 0


async def test_streams_are_measured_to_their_end(channel: grpc.aio.Channel) -> None:
    method = "/m.Svc/Stream"
    labels = {"service": SERVICE, "method": method, "code": "OK"}
    before = sample("stageflow_rpc_requests_total", **labels)
    assert [r async for r in channel.unary_stream(method)(b"x")] == [b"a", b"b"]
    await counted("stageflow_rpc_requests_total", before + 1, **labels)


def test_store_operations_record_bytes_and_latency(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert isinstance(store, InstrumentedStore) and isinstance(store.inner, LocalStore)
    put_bytes = sample("stageflow_store_bytes_total", operation="put")
    get_bytes = sample("stageflow_store_bytes_total", operation="get")
    get_errors = sample("stageflow_store_duration_seconds_count", operation="get", outcome="error")

    store.put("a/b", b"12345")
    assert store.get("a/b") == b"12345"
    with pytest.raises(NotFound):
        store.get("a/missing")

    assert sample("stageflow_store_bytes_total", operation="put") == put_bytes + 5
    assert sample("stageflow_store_bytes_total", operation="get") == get_bytes + 5
    assert (
        sample("stageflow_store_duration_seconds_count", operation="get", outcome="error")
        == get_errors + 1
    )
    assert store.exists("a/b") and store.list_keys("a/") == ["a/b"]
    assert store.describe() == store.inner.describe()


def test_metrics_endpoint_serves_prometheus_text(tmp_path: Path) -> None:
    server = start_metrics_server("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    assert "# TYPE stageflow_rpc_duration_seconds histogram" in text
    assert metrics_port_file(tmp_path / "p", None) == tmp_path / "p.metrics"
    assert metrics_port_file(tmp_path / "p", tmp_path / "m") == tmp_path / "m"
    assert metrics_port_file(None, None) is None


def test_jsonl_exporter_writes_one_span_per_line_with_inherited_job_id(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()  # local: the process-wide provider stays untouched
    provider.add_span_processor(_JobIdProcessor())
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent", attributes={JOB_ID: "job-1"}),
        tracer.start_as_current_span("child"),
    ):
        pass
    provider.shutdown()
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["child", "parent"]
    child, parent = spans
    assert child["trace_id"] == parent["trace_id"]
    assert child["parent_span_id"] == parent["span_id"]
    assert child["attributes"][JOB_ID] == "job-1"


async def _serve_until_port(settings: CommonSettings) -> asyncio.Task[None]:
    task = asyncio.create_task(serve([], settings, name="unit"))
    assert settings.port_file is not None
    async with asyncio.timeout(20):
        while not settings.port_file.exists():
            assert not task.done(), "server exited before writing its port file"
            await asyncio.sleep(0.02)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_serve_exposes_metrics_beside_its_port_file(tmp_path: Path) -> None:
    settings = CommonSettings(port_file=tmp_path / "port", grace_seconds=0)
    task = await _serve_until_port(settings)
    metrics_file = tmp_path / "port.metrics"
    try:
        port = int(metrics_file.read_text())
        url = f"http://127.0.0.1:{port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"# TYPE stageflow_rpc_duration_seconds histogram" in text
    finally:
        await _stop(task)
    assert not metrics_file.exists(), "the metrics port file is removed on exit"


@pytest.mark.parametrize("disabled", [-1, None])
async def test_metrics_port_negative_or_empty_disables_the_endpoint(
    tmp_path: Path, disabled: int | None
) -> None:
    settings = CommonSettings(port_file=tmp_path / "port", metrics_port=disabled, grace_seconds=0)
    task = await _serve_until_port(settings)
    try:
        assert not (tmp_path / "port.metrics").exists()
    finally:
        await _stop(task)
