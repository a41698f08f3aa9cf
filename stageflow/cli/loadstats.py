"""Load-test results: samples from every client process, merged into one report.

Pure Python, no grpc and no typer, so bench/ and unit tests use it directly.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The stage's own timing breakdown (stageflow.v1.Timing), in report order.
PHASES: tuple[str, ...] = (
    "queue_ms",
    "load_inputs_ms",
    "compute_ms",
    "store_output_ms",
    "total_ms",
)
OK = "OK"


@dataclass(frozen=True)
class Sample:
    """One measured request, as a client process saw it."""

    start_s: float  # wall clock (time.time()) when it was sent, shared by all processes
    latency_s: float
    code: str  # gRPC status name, "OK", or e.g. "JOB_FAILED" for orchestrator jobs
    timing: Mapping[str, float] | None = None  # the server's split, when it answered


@dataclass
class WorkerResult:
    """What one client process hands back."""

    samples: list[Sample] = field(default_factory=list)
    sent: int = 0  # every request sent, warm-up included
    cpu_s: float = 0.0  # this process's CPU time (user + system) over the run
    wall_s: float = 0.0
    max_send_lag_s: float = 0.0  # open loop: how late a send was against its schedule
    error_details: dict[str, str] = field(default_factory=dict)  # first message per code


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def merge(results: Iterable[WorkerResult]) -> WorkerResult:
    """All processes' results as one: samples by send time, counters summed,
    wall time the longest (the processes ran side by side)."""
    merged = WorkerResult()
    for result in results:
        merged.samples.extend(result.samples)
        merged.sent += result.sent
        merged.cpu_s += result.cpu_s
        merged.wall_s = max(merged.wall_s, result.wall_s)
        merged.max_send_lag_s = max(merged.max_send_lag_s, result.max_send_lag_s)
        for code, detail in result.error_details.items():
            merged.error_details.setdefault(code, detail)
    merged.samples.sort(key=lambda s: s.start_s)
    return merged


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def build_report(
    merged: WorkerResult, *, config: Mapping[str, Any], processes: int
) -> dict[str, Any]:
    """The JSON-able report: throughput, latency percentiles (ms) of successful
    requests, errors by code, the server's split and the client's own cost."""
    samples = merged.samples
    ok = [s for s in samples if s.code == OK]
    errors = Counter(s.code for s in samples if s.code != OK)
    # The measured window: first measured send to last measured completion.
    last_done = max((s.start_s + s.latency_s for s in samples), default=0.0)
    window = last_done - samples[0].start_s if samples else 0.0
    latencies_ms = [s.latency_s * 1000 for s in ok]
    server: dict[str, dict[str, float]] = {}
    timed = [s.timing for s in ok if s.timing]
    for phase in PHASES:
        values = [t[phase] for t in timed if phase in t]
        if values:
            server[phase] = {
                "median": statistics.median(values),
                "mean": statistics.fmean(values),
            }
    cpu_per_request_ms = merged.cpu_s * 1000 / merged.sent if merged.sent else math.nan
    return {
        "config": dict(config),
        "requests": len(samples),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "error_details": {code: merged.error_details.get(code, "") for code in sorted(errors)},
        "duration_s": window,
        "throughput_rps": len(ok) / window if window > 0 else 0.0,
        "latency_ms": _summary(latencies_ms),
        "server_ms": server,
        "client": {
            "processes": processes,
            "sent": merged.sent,
            "cpu_s": merged.cpu_s,
            "wall_s": merged.wall_s,
            "cpu_per_request_ms": cpu_per_request_ms,
            # Fraction of one core the clients used, summed over processes.
            "cpu_utilisation": merged.cpu_s / merged.wall_s if merged.wall_s else 0.0,
            "max_send_lag_ms": merged.max_send_lag_s * 1000,
        },
        "samples": [
            {
                "t_s": s.start_s - samples[0].start_s,
                "latency_ms": s.latency_s * 1000,
                "code": s.code,
            }
            for s in samples
        ],
    }
