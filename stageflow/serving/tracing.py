"""OpenTelemetry tracing: set-up, the JSON-lines exporter, and gRPC propagation.

Off by default: until `configure_tracing` installs an SDK provider, the
OpenTelemetry API hands out no-op spans, so the instrumentation below costs
almost nothing. Context crosses processes in gRPC metadata as W3C
``traceparent``; the client interceptor injects it, `server_span` extracts it.

Every span carries the job id (``stageflow.job_id``): server spans read it from
the ``x-job-id`` metadata, the orchestrator sets it on the job's span, and
`_JobIdProcessor` copies it from parent to child within a process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

JOB_ID = "stageflow.job_id"
EXPORTERS = ("none", "otlp", "jsonl")

tracer = trace.get_tracer("stageflow")


class JsonlSpanExporter(SpanExporter):
    """One JSON object per finished span, one per line, appended to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(s), default=str) + "\n" for s in spans]
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.writelines(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


class _JobIdProcessor(SpanProcessor):
    """Copies the parent's job id to each new span started in this process."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        if span.attributes and JOB_ID in span.attributes:
            return
        attributes = getattr(trace.get_current_span(parent_context), "attributes", None) or {}
        if job_id := attributes.get(JOB_ID):
            span.set_attribute(JOB_ID, job_id)


def configure_tracing(
    exporter: str, *, service: str, endpoint: str = "", file: str = ""
) -> Callable[[], None]:
    """Install a tracer provider for this process; return its shutdown (which
    flushes). ``exporter`` is "none" (nothing installed), "otlp" (OTLP/gRPC to
    `endpoint`, default localhost:4317) or "jsonl" (to `file`; ``{service}`` in
    the path is replaced by the service name)."""
    if exporter == "none":
        return lambda: None
    if exporter not in EXPORTERS:
        raise ValueError(
            f"tracing exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}"
        )
    provider = TracerProvider(resource=Resource.create({"service.name": service or "stageflow"}))
    provider.add_span_processor(_JobIdProcessor())
    if exporter == "jsonl":
        if not file:
            raise ValueError("tracing exporter jsonl needs tracing_file")
        path = Path(file.replace("{service}", service or "stageflow"))
        # Synchronous: a span is on disk when it ends, which tests and crash
        # debugging both want; the file write is cheap next to an RPC.
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=endpoint or None, insecure=True)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _metadata_dict(metadata: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        carrier[key] = value.decode() if isinstance(value, bytes) else str(value)
    return carrier


@contextmanager
def server_span(method: str, metadata: Any) -> Iterator[trace.Span]:
    """The server span of one call, child of the caller's span when the
    metadata carries a traceparent; current while the handler runs."""
    carrier = _metadata_dict(metadata)
    attributes = {"rpc.system": "grpc", "rpc.method": method}
    if job_id := carrier.get("x-job-id"):
        attributes[JOB_ID] = job_id
    with tracer.start_as_current_span(
        method.lstrip("/"),
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def tag_job(job_id: str) -> None:
    """Name the job on the current span (one started before the id existed),
    so the spans started under it from here on carry it too."""
    trace.get_current_span().set_attribute(JOB_ID, job_id)


def _current_job_id() -> str:
    return _span_job_id(trace.get_current_span())


def _details_with_trace(
    details: grpc.aio.ClientCallDetails,
) -> tuple[grpc.aio.ClientCallDetails, trace.Span]:
    metadata = list(details.metadata or ())
    carrier = _metadata_dict(metadata)
    attributes = {"rpc.system": "grpc", "rpc.method": str(details.method)}
    job_id = carrier.get("x-job-id") or _current_job_id()
    if job_id:
        attributes[JOB_ID] = job_id
        if "x-job-id" not in carrier:  # so the callee's spans and log lines carry it too
            metadata.append(("x-job-id", job_id))
    method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
    span = tracer.start_span(method.lstrip("/"), kind=trace.SpanKind.CLIENT, attributes=attributes)
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    metadata.extend(headers.items())
    new = grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
    return new, span


_finishing: set[asyncio.Task[None]] = set()  # strong references until they run


def _span_job_id(span: trace.Span) -> str:
    attributes = getattr(span, "attributes", None) or {}
    return str(attributes.get(JOB_ID, ""))


def _answer_job_id(response: Any) -> str:
    job = getattr(response, "job", None)
    return str(getattr(job, "job_id", "") or "")


def _end_with_status(span: trace.Span) -> Callable[[Any], None]:
    """A done callback ending `span` with the call's status. An aio call's
    code() is a coroutine, hence the task (it returns at once: the call is done)."""

    async def finish(call: Any) -> None:
        try:
            code = await call.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        except BaseException:  # cancelled before a status arrived
            name = "CANCELLED"
        span.set_attribute("rpc.grpc.status_code", name)
        if name != "OK":
            span.set_status(trace.StatusCode.ERROR, name)
        elif (
            isinstance(call, grpc.aio.UnaryUnaryCall)
            and not _span_job_id(span)
            and (job_id := _answer_job_id(await call))
        ):
            # A call that created the job (SubmitJob, RerunJob) started before
            # the id existed: name it from the answer.
            span.set_attribute(JOB_ID, job_id)
        span.end()

    def done(call: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(finish(call))
        except RuntimeError:  # no loop any more (shutdown): end without a status
            span.end()
            return
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    return done


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """One per call shape: grpc.aio files each interceptor under the first
    interface it implements only, so one class cannot serve both."""
    return [_UnaryUnaryTracing(), _UnaryStreamTracing()]


async def _traced(
    continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
) -> Any:
    """A client span per call, its context sent as W3C traceparent metadata;
    the span ends when the call reaches its status."""
    details, span = _details_with_trace(client_call_details)
    try:
        call = await continuation(details, request)
    except BaseException:
        span.end()
        raise
    call.add_done_callback(_end_with_status(span))
    return call


class _UnaryUnaryTracing(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await _traced(continuation, client_call_details, request)


class _UnaryStreamTracing(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await _traced(continuation, client_call_details, request)
