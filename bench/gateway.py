"""The gateway's cost: a job through HTTP + SSE against the same job straight over gRPC.

One `LocalCluster` (three stage processes, the orchestrator, the gateway; the
stage cache off, so every job computes) runs both paths in the same run,
alternating job by job (gRPC, gateway, gRPC, ...), each job with its own
seed. A gRPC job is SubmitJob, WatchJob to `finished`, then the final image
over GetArtifact; a gateway job is `POST /v1/jobs`, the SSE stream of
`/v1/jobs/{id}/events` to `finished`, then `GET .../versions/1/image`. The
figure is the ratio of the medians (goal <= 1.02 at 512 px). Then
`GET /v1/jobs/{id}` at concurrency 32: requests per second and p99 latency
(goal p99 <= 20 ms on this machine).

    .venv/bin/python bench/gateway.py --out docs/benchmarks.md [--px 512 --jobs 5]

Writes the `bench/gateway.py` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import fmt_ms, machine, table, utc_now, verdict, write_section  # noqa: E402

SECTION = "bench/gateway.py"
CONCURRENCY = 32


def job_body(px: int, seed: int) -> dict[str, Any]:
    return {
        "bundle": {"base": "a red circle on a blue background", "style": "bench"},
        "seed": seed,
        "width": px,
        "height": px,
    }


async def grpc_job(client: Any, px: int, seed: int) -> float:
    from stageflow.v1 import orchestrator_pb2 as pb

    body = job_body(px, seed)
    t0 = time.perf_counter()
    job = await client.submit(
        base=body["bundle"]["base"], style=body["bundle"]["style"], seed=seed, width=px, height=px
    )
    finished = job
    async for event in client.watch(job.job_id):
        if event.WhichOneof("event") == "finished":
            finished = event.finished
    if finished.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"gRPC job {job.job_id}: {finished.error}")
    await client.fetch_final(finished)
    return (time.perf_counter() - t0) * 1000


async def gateway_job(http: Any, px: int, seed: int) -> float:
    t0 = time.perf_counter()
    reply = await http.post("/v1/jobs", json=job_body(px, seed))
    reply.raise_for_status()
    job_id = reply.json()["job"]["job_id"]
    state = ""
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as events:
        kind = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "finished":
                state = json.loads(line.removeprefix("data: "))["finished"]["state"]
    if state != "JOB_STATE_SUCCEEDED":
        raise RuntimeError(f"gateway job {job_id}: {state}")
    image = await http.get(f"/v1/jobs/{job_id}/versions/1/image")
    image.raise_for_status()
    return (time.perf_counter() - t0) * 1000


async def jobs_alternating(
    orchestrator: str, gateway: str, px: int, pairs: int, log: Any
) -> tuple[list[float], list[float]]:
    import httpx

    from stageflow.client import StageflowClient

    grpc_ms: list[float] = []
    http_ms: list[float] = []
    async with (
        StageflowClient(orchestrator) as client,
        httpx.AsyncClient(base_url=gateway, timeout=600) as http,
    ):
        # Warm-up: one of each (model caches, connections), not counted.
        await grpc_job(client, px, 10_000)
        await gateway_job(http, px, 10_001)
        for i in range(pairs):
            first_grpc = i % 2 == 0  # alternate which path goes first in a pair
            for path in ("grpc", "http") if first_grpc else ("http", "grpc"):
                seed = 2 * i + (0 if path == "grpc" else 1)
                if path == "grpc":
                    grpc_ms.append(await grpc_job(client, px, seed))
                else:
                    http_ms.append(await gateway_job(http, px, seed))
            log(f"pair {i + 1}/{pairs}: grpc {grpc_ms[-1]:.0f} ms, gateway {http_ms[-1]:.0f} ms")
    return grpc_ms, http_ms


async def get_load(gateway: str, job_id: str, requests: int) -> tuple[float, list[float]]:
    """`requests` GETs of one job by CONCURRENCY workers: (req/s, latencies in ms)."""
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as http:
        for _ in range(CONCURRENCY):  # open the connections
            (await http.get(f"/v1/jobs/{job_id}")).raise_for_status()
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                reply = await http.get(f"/v1/jobs/{job_id}")
                latencies.append((time.perf_counter() - t0) * 1000)
                reply.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        wall = time.perf_counter() - t0
    return len(latencies) / wall, latencies


async def grpc_get_load(orchestrator: str, job_id: str, requests: int) -> tuple[float, list[float]]:
    """The same load straight over gRPC (GetJob), for the gateway's share of it."""
    from stageflow.client import StageflowClient

    latencies: list[float] = []
    async with StageflowClient(orchestrator) as client:
        await client.versions(job_id)
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                await client.versions(job_id)
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        wall = time.perf_counter() - t0
    return len(latencies) / wall, latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="fixture models")
    parser.add_argument("--px", type=int, default=512, help="the job's base size")
    parser.add_argument("--jobs", type=int, default=5, help="jobs per path")
    parser.add_argument("--gets", type=int, default=3000, help="GET /v1/jobs/{id} requests")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    args = parser.parse_args(argv)
    started, t0 = utc_now(), time.perf_counter()
    load_start = os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    from stageflow.cli.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        log("starting the cluster")
        with LocalCluster(
            state_dir=Path(tmp),
            models_dir=args.models.resolve(),
            torch_threads=args.threads,
            orchestrator_args=["--stage-cache", "false"],
            gateway_port=0,
        ) as cluster:
            grpc_ms, http_ms = asyncio.run(
                jobs_alternating(
                    cluster.orchestrator_address, cluster.gateway_url, args.px, args.jobs, log
                )
            )
            job_id = asyncio.run(_any_job(cluster.orchestrator_address))
            log(f"GET /v1/jobs/{job_id} x {args.gets} at concurrency {CONCURRENCY}")
            rate, latencies = asyncio.run(get_load(cluster.gateway_url, job_id, args.gets))
            grpc_rate, grpc_latencies = asyncio.run(
                grpc_get_load(cluster.orchestrator_address, job_id, args.gets)
            )
    load_end = os.getloadavg()[0]
    grpc_med, http_med = statistics.median(grpc_ms), statistics.median(http_ms)
    ratio = http_med / grpc_med
    command = f".venv/bin/python bench/gateway.py {' '.join(argv)}".strip()
    body = [
        "# Benchmarks: the gateway (HTTP + SSE) against gRPC",
        "",
        f"- date: {started}; {time.perf_counter() - t0:.0f} s in all",
        f"- machine: {machine()}; load average {load_start:.2f} at the start, "
        f"{load_end:.2f} at the end (a shared machine: other work ran meanwhile)",
        f"- command: `{command}`",
        f"- jobs: the fixture models, {args.px} px base (x4 upscale: {4 * args.px} px final), "
        f"stage cache off, {args.jobs} per path after one warm-up each, alternating, each "
        "with its own seed; a gRPC job is SubmitJob + WatchJob + GetArtifact of the final "
        "image, a gateway job POST /v1/jobs + the SSE stream + GET of the final PNG",
        "",
        f"**Goal: gateway / gRPC <= 1.02 per job at 512 px**: "
        f"{verdict(ratio <= 1.02)} {ratio:.3f} at {args.px} px",
        "",
        *table(
            ["path", "median (ms)", "min (ms)", "max (ms)"],
            [
                ["gRPC", fmt_ms(grpc_med), fmt_ms(min(grpc_ms)), fmt_ms(max(grpc_ms))],
                ["gateway", fmt_ms(http_med), fmt_ms(min(http_ms)), fmt_ms(max(http_ms))],
            ],
        ),
        "",
        "Read the ratio against the spread: one path's jobs vary by more than the goal's "
        "2 % from one to the next on this shared 2-core machine, so a ratio within a few "
        "percent of 1 says the gateway adds nothing measurable to a job, not that it costs "
        "exactly that.",
        "",
        f"**Goal: GET /v1/jobs/{{id}} p99 <= 20 ms at concurrency {CONCURRENCY}**: "
        f"{verdict(p99(latencies) <= 20)} p99 {p99(latencies):.1f} ms, "
        f"p50 {statistics.median(latencies):.1f} ms, {rate:.0f} requests/s "
        f"({len(latencies)} requests; one uvicorn worker, the orchestrator on the same cores)",
        "",
        *table(
            ["GET a job, concurrency 32", "requests/s", "p50 (ms)", "p99 (ms)"],
            [
                [
                    "gateway: GET /v1/jobs/{id}",
                    f"{rate:.0f}",
                    fmt_ms(statistics.median(latencies)),
                    fmt_ms(p99(latencies)),
                ],
                [
                    "straight gRPC: GetJob",
                    f"{grpc_rate:.0f}",
                    fmt_ms(statistics.median(grpc_latencies)),
                    fmt_ms(p99(grpc_latencies)),
                ],
            ],
        ),
        "",
        "The load generator (httpx, in this process) shares the 2 cores with the gateway, "
        "the orchestrator and the idle stages. The gateway spends about 3 ms of CPU per GET "
        "(profiled: the gRPC call, protobuf to JSON, FastAPI's routing, h11), so one worker "
        "here tops out at a few hundred requests/s and 32 concurrent requests queue behind "
        "each other; httptools in place of h11 changed nothing measurable in a trial. The "
        "p99 goal needs several gateway workers on cores of their own.",
    ]
    write_section(args.out, SECTION, "\n".join(body))
    log(f"ratio {ratio:.3f}; GET p99 {p99(latencies):.1f} ms, {rate:.0f} req/s")
    log(f"wrote the {SECTION} section of {args.out}")


async def _any_job(orchestrator: str) -> str:
    from stageflow.client import StageflowClient

    async with StageflowClient(orchestrator) as client:
        return (await client.list(page_size=1))[0].job_id


if __name__ == "__main__":
    from stageflow.serving.processes import signals_interrupt

    with signals_interrupt():
        main()
