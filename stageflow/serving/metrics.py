"""Prometheus metrics shared by every stageflow process, and their HTTP endpoint.

Metrics live in prometheus-client's default registry (one per process), so a
scrape of any service shows its RPCs, its object-store traffic and, for a
stage or the orchestrator, what only that process knows (queue depth, step
time, cache hits). Every name starts with ``stageflow_``; the README lists them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Latencies from a fast Describe (ms) to a long 512 px denoise (minutes).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)

RPC_DURATION = Histogram(
    "stageflow_rpc_duration_seconds",
    "Server-side gRPC call latency, from the call's start to its status.",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
)
RPC_REQUESTS = Counter(
    "stageflow_rpc_requests",
    "gRPC calls served, by outcome (exported as stageflow_rpc_requests_total).",
    ["service", "method", "code"],
)
RPC_IN_FLIGHT = Gauge(
    "stageflow_rpc_in_flight",
    "gRPC calls being served right now.",
    ["service", "method"],
)
STAGE_QUEUE_DEPTH = Gauge(
    "stageflow_stage_queue_depth",
    "Stage calls waiting for an execution slot.",
    ["stage"],
)
STAGE_RUNNING = Gauge(
    "stageflow_stage_running",
    "Stage calls holding an execution slot (loading inputs or computing).",
    ["stage"],
)
STAGE_STEP_DURATION = Histogram(
    "stageflow_stage_step_seconds",
    "Time between consecutive progress events of a stage call (one denoising "
    "step; the first is measured from the start of compute).",
    ["stage"],
    buckets=_STEP_BUCKETS,
)
STAGE_BATCH_SIZE = Histogram(
    "stageflow_stage_batch_size",
    "Requests computed together in one model run.",
    ["stage"],
    buckets=_BATCH_BUCKETS,
)
CACHE_HITS = Counter(
    "stageflow_stage_cache_hits",
    "Orchestrator stage runs answered from the stage cache (no stage call).",
    ["stage"],
)
CACHE_MISSES = Counter(
    "stageflow_stage_cache_misses",
    "Orchestrator stage runs looked up in the stage cache and not found.",
    ["stage"],
)
STORE_BYTES = Counter(
    "stageflow_store_bytes",
    "Bytes moved to (put) or from (get) the object store.",
    ["operation"],
)
STORE_DURATION = Histogram(
    "stageflow_store_duration_seconds",
    "Object-store operation latency, by operation and outcome (ok or error).",
    ["operation", "outcome"],
    buckets=_LATENCY_BUCKETS,
)


class MetricsServer:
    """The /metrics HTTP endpoint, served from a daemon thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Listen on `host:port` (0 picks a free port); raise OSError when it cannot."""
    server, thread = start_http_server(port, addr=host)
    return MetricsServer(server, thread)


def metrics_port_file(port_file: Path | None, explicit: Path | None) -> Path | None:
    """Where to write the metrics port: the explicit setting, else beside the
    gRPC port file (``<port_file>.metrics``), else nowhere."""
    if explicit is not None:
        return explicit
    if port_file is not None:
        return port_file.with_name(port_file.name + ".metrics")
    return None
