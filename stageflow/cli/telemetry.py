"""Optional tracing of the CLI's client commands.

With STAGEFLOW_TRACING_EXPORTER set (and the serving extra installed, which
brings OpenTelemetry), a command is one root span, ``cli <command>``, and its
calls carry that trace to the orchestrator. Otherwise everything here is a
no-op and OpenTelemetry is never imported: the client commands run on the
slim install.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# stageflow.serving.tracing once `start` configured it; None: tracing is off.
_tracing: ModuleType | None = None


@dataclass(frozen=True)
class TracingSettings:
    """The tracing variables the serving processes read too."""

    # "none", "otlp" or "jsonl" (STAGEFLOW_TRACING_EXPORTER)
    exporter: str = "none"
    # OTLP/gRPC endpoint (STAGEFLOW_TRACING_ENDPOINT; empty: localhost:4317)
    endpoint: str = ""
    # jsonl file; "{service}" is replaced by "cli" (STAGEFLOW_TRACING_FILE)
    file: str = "var/traces/{service}.jsonl"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracingSettings:
        env = os.environ if environ is None else environ
        return cls(
            exporter=env.get("STAGEFLOW_TRACING_EXPORTER", "").strip() or cls.exporter,
            endpoint=env.get("STAGEFLOW_TRACING_ENDPOINT", ""),
            file=env.get("STAGEFLOW_TRACING_FILE", "") or cls.file,
        )


def start(service: str = "cli", settings: TracingSettings | None = None) -> Callable[[], None]:
    """Configure tracing when it is asked for and installed; returns its
    shutdown (which flushes the spans)."""
    global _tracing
    settings = settings if settings is not None else TracingSettings.from_env()
    if settings.exporter == "none":
        return lambda: None
    try:
        from stageflow.serving import tracing
    except ImportError as err:
        print(
            f"tracing is off: STAGEFLOW_TRACING_EXPORTER={settings.exporter} needs "
            f"OpenTelemetry (pip install 'stageflow[serving]'): {err}",
            file=sys.stderr,
        )
        return lambda: None
    shutdown = tracing.configure_tracing(
        settings.exporter, service=service, endpoint=settings.endpoint, file=settings.file
    )
    _tracing = tracing

    def stop() -> None:
        global _tracing
        _tracing = None
        shutdown()

    return stop


def client_interceptors() -> list[Any]:
    """The client interceptors that carry the trace context; none when off."""
    return _tracing.client_interceptors() if _tracing is not None else []


@contextlib.contextmanager
def command_span(command: str, job_id: str = "") -> Iterator[None]:
    """The command's root span (a no-op when tracing is off)."""
    if _tracing is None:
        yield
        return
    attributes = {_tracing.JOB_ID: job_id} if job_id else {}
    with _tracing.tracer.start_as_current_span(f"cli {command}", attributes=attributes):
        yield


def tag_job(job_id: str) -> None:
    """Name the job on the current span, once its id is known (after a submit)."""
    if _tracing is not None:
        _tracing.tag_job(job_id)
