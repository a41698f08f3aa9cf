"""Serving benchmarks: writes the bench/serving.py section of docs/benchmarks.md.

    .venv/bin/python bench/serving.py [--threads 2] [--quick] [--out docs/benchmarks.md]

Five figures, all on the fixture models under models/ (`make fixtures`):

1. orchestration overhead: one job through real processes (orchestrator and
   three stage processes over gRPC, local-folder store; `stageflow.cli.cluster.LocalCluster`)
   against the same three StageModels called in this process with the same
   parameters (built by the orchestrator's own `with_defaults` and
   `build_run_request`, decoded by the stage's own codec) and the same seed.
   The two modes alternate which runs first, round by round; each round has its
   own seed, shared by both modes, so the stage cache never answers for the
   services and the two final images must be byte-identical.
2. per-stage throughput and latency at closed-loop concurrency 1, 2, 4, 8, with
   the load tester's own `stageflow.cli.loadgen.run_load`, against the same processes.
3. dynamic batching on (max_batch_size 8) vs off (1) at concurrency 8: two base
   stage processes on the onnxruntime backend over one `export_onnx` export,
   measured in alternating rounds.
4. the stage cache: after each service job of (1), the same job submitted
   again (every stage a cache hit) and a RerunJob from upscale with only its
   tile_overlap changed (base and refine reused, upscale recomputed).
5. the tiled upscaler's peak memory against untiled, 1024 -> 4096 px, each mode in
   its own process (bench/upscale_memory.py), so each ru_maxrss is its own peak.

`--quick` runs every part at small sizes and few repeats: a smoke test of the
script, not figures to quote. This is a shared 2-core machine: ratios measured
within one run are the numbers to read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import (  # noqa: E402
    fmt_ms,
    fmt_ratio,
    machine,
    median,
    ratio,
    table,
    utc_now,
    verdict,
    write_section,
)
from stageflow import kinds  # noqa: E402

SECTION = "bench/serving.py"
STAGES = kinds.default_pipeline()
# From each kind's declaration (stageflow.kinds): its family, fixture folder and
# the RunRequest field of its params.
FAMILIES = {s: kinds.get(s).model_family for s in STAGES}
FOLDERS = {s: kinds.get(s).model_folder for s in STAGES}
LOAD_KINDS = {s: kinds.params_field(kinds.get(s)) for s in STAGES}
PHASES = ("queue_ms", "load_inputs_ms", "compute_ms", "store_output_ms", "total_ms")
JOB = {"base": "a lighthouse on a cliff at dusk", "style": "oil painting"}
OVERHEAD_GOAL = 1.10
BATCHING_GOAL = 1.3
QUEUE = "queue in the stages"
LOAD = "load inputs (read, verify sha256, decode PNG)"
STORE = "store output (encode PNG, write)"
COMPUTE = "compute, services minus in process"
OUTSIDE = "outside the stages (orchestrator, gRPC, job state, client)"
# The likely reason, by the part of the overhead that is largest.
WHY = {
    QUEUE: "a stage call waited for a slot; one job alone should never queue, so something "
    "else was running on the stage.",
    LOAD: "every hand-off through the store is a PNG decode the in-process path never "
    "pays; with the tiny fixtures the models are cheap, so this fixed per-pixel cost is a "
    "large share of the job (at real model scale, seconds per UNet step here, it would be "
    "a few per cent).",
    STORE: "every stage output is PNG-encoded and written, which the in-process path "
    "never pays (the last column of the table is that encode alone, measured in "
    "process); the 2048² final costs most. With the tiny fixtures the models are cheap, "
    "so this fixed per-pixel cost is a large share of the job (at real model scale, "
    "seconds per UNet step here, it would be a few per cent).",
    COMPUTE: "the same model calls took longer inside the stage processes than in the "
    "benchmark process in this run. Both modes run the same StageModel code on the same "
    "two threads, one process computing at a time, so the difference is the machine's "
    "noise landing on one mode more than the other (see the spread per round); the ratio "
    "with compute held equal is what the services themselves add.",
    OUTSIDE: "time between the stages: the orchestrator's scheduling, its SQLite writes, "
    "gRPC calls and the watch stream.",
}


@dataclass(frozen=True)
class Plan:
    job_px: int
    job_rounds: int  # measured rounds; each runs both modes, the order alternating
    stage_px: int
    concurrencies: tuple[int, ...]
    load_s: float
    load_warmup_s: float
    batch_px: tuple[int, ...]
    batch_rounds: int
    batch_concurrency: int
    batch_s: float
    memory_side: int


FULL = Plan(
    job_px=512,
    job_rounds=6,
    stage_px=128,
    concurrencies=(1, 2, 4, 8),
    load_s=10.0,
    load_warmup_s=1.0,
    batch_px=(64, 128),
    batch_rounds=2,
    batch_concurrency=8,
    batch_s=10.0,
    memory_side=1024,
)
QUICK = Plan(
    job_px=128,
    job_rounds=2,
    stage_px=64,
    concurrencies=(1, 2),
    load_s=1.5,
    load_warmup_s=0.3,
    batch_px=(64,),
    batch_rounds=1,
    batch_concurrency=8,
    batch_s=2.0,
    memory_side=128,
)


# -- (1) and (4): jobs through the services vs in process ------------------------------


@dataclass
class JobSample:
    job_id: str
    wall_ms: float  # client side: SubmitJob sent -> the `finished` event received
    stages: dict[str, dict[str, float]]  # stage -> the stage's own timing split (ms)
    cache_hits: dict[str, bool]
    outputs: dict[str, str]  # stage -> sha256 of its output
    final_sha256: str
    requests: dict[str, Any]  # stage -> the exact params message the stage was sent


@dataclass
class LocalSample:
    total_ms: float
    stages: dict[str, float]  # model.run_with_report alone, per stage
    png_ms: dict[str, float]  # encode_png of each output, timed apart (not in total_ms)
    final_sha256: str


@dataclass
class Pipeline:
    service: list[JobSample] = field(default_factory=list)
    local: list[LocalSample] = field(default_factory=list)
    resubmit: list[JobSample] = field(default_factory=list)
    rerun_last: list[JobSample] = field(default_factory=list)
    identical: list[bool] = field(default_factory=list)  # final PNG sha256 equal, per round
    params_equal: list[bool] = field(default_factory=list)
    rerun_reused: list[bool] = field(default_factory=list)  # base/refine kept, upscale new
    describe: dict[str, tuple[int, int]] = field(default_factory=dict)  # max conc., max queue


class InProcess:
    """The three StageModels in this process, fed exactly what the stages are sent."""

    def __init__(self, models_dir: Path, threads: int) -> None:
        import torch

        from stageflow.inference.registry import create_model
        from stageflow.orchestrator.settings import PIPELINES_DIR
        from stageflow.orchestrator.spec import parse_spec

        torch.set_num_threads(threads)
        self.spec = parse_spec(PIPELINES_DIR / "default.yaml")
        self.models = {
            s: create_model(FAMILIES[s], models_dir / FOLDERS[s], torch_threads=threads)
            for s in STAGES
        }
        for model in self.models.values():
            model.load()

    def requests(self, submit: Any) -> dict[str, Any]:
        """stage -> RunRequest, as the orchestrator builds them for this job."""
        from stageflow.orchestrator.bundle import build_run_request
        from stageflow.orchestrator.spec import with_defaults

        effective = with_defaults(submit, self.spec)
        return {s: build_run_request(s, effective) for s in STAGES}

    def run(self, submit: Any) -> LocalSample:
        from stageflow.inference.interface import StageInputs
        from stageflow.stage.codec import params_from_request
        from stageflow.stage.images import encode_png

        requests = self.requests(submit)
        image = None
        outputs, times = {}, {}
        started = time.perf_counter()
        for stage in STAGES:
            model = self.models[stage]
            params = params_from_request(requests[stage], model.describe().param_defaults)
            inputs = StageInputs(image=image)
            model.validate(params)
            model.validate_inputs(params, inputs)
            t0 = time.perf_counter()
            image = model.run_with_report(params, inputs, lambda i, n: None, lambda: False).image
            times[stage] = (time.perf_counter() - t0) * 1000
            outputs[stage] = image
        total = (time.perf_counter() - started) * 1000
        png_ms, final = {}, b""
        for stage in STAGES:
            t0 = time.perf_counter()
            final = encode_png(outputs[stage])
            png_ms[stage] = (time.perf_counter() - t0) * 1000
        return LocalSample(total, times, png_ms, hashlib.sha256(final).hexdigest())


def submit_request(px: int, seed: int) -> Any:
    """The SubmitJobRequest `StageflowClient.submit(**job_kwargs(px, seed))` sends."""
    from stageflow.v1 import orchestrator_pb2 as pb

    return pb.SubmitJobRequest(
        bundle=pb.PromptBundle(base=JOB["base"], style=JOB["style"]),
        seed=seed,
        width=px,
        height=px,
    )


def job_kwargs(px: int, seed: int) -> dict[str, Any]:
    return {**JOB, "seed": seed, "width": px, "height": px}


def job_sample(job: Any, wall_ms: float) -> JobSample:
    from stageflow.v1 import orchestrator_pb2 as pb

    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job {job.job_id} ended {pb.JobState.Name(job.state)}: {job.error}")
    stages = {
        run.stage: {phase: float(getattr(run.timing, phase)) for phase in PHASES}
        for run in job.stages
    }
    return JobSample(
        job_id=job.job_id,
        wall_ms=wall_ms,
        stages=stages,
        cache_hits={run.stage: run.cache_hit for run in job.stages},
        outputs={run.stage: run.output.sha256 for run in job.stages},
        final_sha256=job.final.sha256,
        requests={run.stage: getattr(run.request, LOAD_KINDS[run.stage]) for run in job.stages},
    )


async def _until_finished(client: Any, job_id: str, version: int) -> Any:
    async for event in client.watch(job_id):
        if event.HasField("finished") and event.finished.version in (version, 0):
            return event.finished
    raise RuntimeError(f"the watch of job {job_id} ended without its version {version} finishing")


async def timed_job(client: Any, px: int, seed: int) -> JobSample:
    started = time.perf_counter()
    job = await client.submit(**job_kwargs(px, seed))
    finished = await _until_finished(client, job.job_id, job.version)
    return job_sample(finished, (time.perf_counter() - started) * 1000)


async def timed_rerun(client: Any, job_id: str, overlap: int) -> JobSample:
    started = time.perf_counter()
    job = await client.rerun(job_id, "upscale", upscale_options={"tile_overlap": overlap})
    finished = await _until_finished(client, job.job_id, job.version)
    return job_sample(finished, (time.perf_counter() - started) * 1000)


def describe_stage(address: str) -> tuple[int, int]:
    import grpc

    from stageflow.v1 import stage_pb2, stage_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = stage_pb2_grpc.StageServiceStub(channel).Describe(
            stage_pb2.DescribeRequest(), timeout=10
        )
    return reply.max_concurrency, reply.max_queue


async def pipeline(address: str, local: InProcess, plan: Plan, log: Any) -> Pipeline:
    """Rounds of (in-process job, service job) in alternating order, plus the cache runs."""
    from stageflow.client import StageflowClient

    out = Pipeline()
    async with StageflowClient(address) as client:
        for i in range(-1, plan.job_rounds):  # round -1 warms both modes up, unrecorded
            seed = 1000 + i + 1
            submit = submit_request(plan.job_px, seed)
            order = ("local", "service") if i % 2 == 0 else ("service", "local")
            got: dict[str, Any] = {}
            for mode in order:
                if mode == "local":
                    got[mode] = local.run(submit)
                else:
                    got[mode] = await timed_job(client, plan.job_px, seed)
            service: JobSample = got["service"]
            # The same job again: every stage's content address is known now.
            again = await timed_job(client, plan.job_px, seed)
            # Only upscale's parameter changes, each round to a value not seen before
            # and near the default, so the upscale costs about what it did in the job.
            rerun = await timed_rerun(client, service.job_id, overlap=DEFAULT_OVERLAP + 2 + i)
            log(
                f"round {i}: in-process {got['local'].total_ms:.0f} ms, "
                f"services {service.wall_ms:.0f} ms, resubmit {again.wall_ms:.0f} ms, "
                f"rerun upscale {rerun.wall_ms:.0f} ms"
            )
            if i < 0:
                continue
            out.local.append(got["local"])
            out.service.append(service)
            out.resubmit.append(again)
            out.rerun_last.append(rerun)
            out.rerun_reused.append(
                all(rerun.outputs[s] == service.outputs[s] for s in ("base", "refine"))
                and not rerun.cache_hits["upscale"]
                and rerun.stages["upscale"]["compute_ms"] > 0
            )
            out.identical.append(got["local"].final_sha256 == service.final_sha256)
            built = local.requests(submit)
            out.params_equal.append(
                all(getattr(built[s], LOAD_KINDS[s]) == service.requests[s] for s in STAGES)
            )
    return out


# -- (2) and (3): the load tester against stage processes ---------------------------


@dataclass
class LoadRow:
    label: str
    concurrency: int
    report: dict[str, Any]

    def server(self, phase: str) -> float:
        value = self.report["server_ms"].get(phase, {}).get("median")
        return float("nan") if value is None else float(value)


def load_params(stage: str, px: int) -> dict[str, Any]:
    """The pipeline's default parameters of each stage, at `px` (the job's without text)."""
    if stage == "base":
        return {"width": px, "height": px, "steps": 20, "guidance_scale": 7.5}
    if stage == "refine":
        return {"steps": 40, "strength": 0.35, "guidance_scale": 7.5}
    return {"tile_size": 128, "tile_overlap": 24}


def load_once(
    address: str, stage: str, px: int, concurrency: int, seconds: float, warmup: float, image: Any
) -> dict[str, Any]:
    from stageflow.cli.loadgen import LoadConfig, run_load

    config = LoadConfig(
        address=address,
        kind=LOAD_KINDS[stage],
        params=load_params(stage, px),
        image=image if stage != "base" else None,
        concurrency=concurrency,
        duration_s=seconds,
        warmup_s=warmup,
        processes=1,
    )
    report = run_load(config)
    if report["ok"] == 0:
        raise RuntimeError(f"{stage} at concurrency {concurrency}: no request succeeded: {report}")
    return report


def stage_loads(
    addresses: dict[str, str], store_url: str, plan: Plan, log: Any
) -> dict[str, list[LoadRow]]:
    from stageflow.cli.loadgen import seed_input
    from stageflow.core.storage import open_store

    image = seed_input(open_store(store_url), plan.stage_px, plan.stage_px)
    rows: dict[str, list[LoadRow]] = {s: [] for s in STAGES}
    for concurrency in plan.concurrencies:
        for stage in STAGES:
            report = load_once(
                addresses[stage],
                stage,
                plan.stage_px,
                concurrency,
                plan.load_s,
                plan.load_warmup_s,
                image,
            )
            rows[stage].append(LoadRow(stage, concurrency, report))
            lat = report["latency_ms"]
            log(
                f"{stage} c={concurrency}: {report['throughput_rps']:.2f} req/s, "
                f"p50 {lat['p50']:.0f} p99 {lat['p99']:.0f} ms, errors {report['errors']}"
            )
    return rows


@contextmanager
def stage_process(argv: Sequence[str], scratch: Path, name: str) -> Iterator[str]:
    """A stage process on a free port; yields its address once health says SERVING."""
    from stageflow.serving.processes import ServerProcess

    port_file = scratch / f"{name}.port"
    cmd = [sys.executable, *argv, "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = scratch / f"{name}.log"
    with ServerProcess(
        name, cmd, log=log, port_file=port_file, env=env, cwd=ROOT, start_timeout=180
    ) as stage:
        yield stage.address


@dataclass
class BatchRow:
    px: int
    off: list[dict[str, Any]]
    on: list[dict[str, Any]]

    @property
    def gain(self) -> float:
        return ratio(rps(self.on), rps(self.off))


def rps(reports: list[dict[str, Any]]) -> float:
    return median([r["throughput_rps"] for r in reports])


def p50(reports: list[dict[str, Any]]) -> float:
    return median([r["latency_ms"]["p50"] for r in reports])


BATCH_DELAY_MS = 5.0
DEFAULT_OVERLAP = 24  # the default pipeline's upscale tile_overlap


def batching(models_dir: Path, scratch: Path, threads: int, plan: Plan, log: Any) -> list[BatchRow]:
    from stageflow.inference.onnx.export import export_onnx

    onnx = export_onnx(models_dir / FOLDERS["base"], scratch / "onnx" / FOLDERS["base"]).folder
    store = (scratch / "batch-store").as_uri()
    common = [
        "-m",
        "stageflow.services.base",
        "--model-path",
        str(onnx),
        "--backend",
        "onnxruntime",
    ]
    common += ["--torch-threads", str(threads), "--store-url", store]
    common += ["--max-queue-delay-ms", str(BATCH_DELAY_MS)]
    rows = []
    with (
        stage_process([*common, "--max-batch-size", "1"], scratch, "base-batch-off") as off,
        stage_process([*common, "--max-batch-size", "8"], scratch, "base-batch-on") as on,
    ):
        for px in plan.batch_px:
            row = BatchRow(px, [], [])
            for r in range(plan.batch_rounds):
                modes = [("off", off, row.off), ("on", on, row.on)]
                for mode, address, reports in modes if r % 2 == 0 else modes[::-1]:
                    report = load_once(
                        address,
                        "base",
                        px,
                        plan.batch_concurrency,
                        plan.batch_s,
                        plan.load_warmup_s,
                        None,
                    )
                    reports.append(report)
                    log(f"batching {mode} {px} px: {report['throughput_rps']:.2f} req/s")
            rows.append(row)
    return rows


# -- (5): tiled vs untiled upscaler memory -------------------------------------------


def upscale_memory(models_dir: Path, threads: int, side: int) -> list[dict[str, Any]]:
    out = []
    for tile in (0, 128):  # untiled first: its page cache and heap are its own process's
        cmd = [sys.executable, str(ROOT / "bench" / "upscale_memory.py")]
        cmd += ["--model-path", str(models_dir / FOLDERS["upscale"]), "--side", str(side)]
        cmd += ["--tile-size", str(tile), "--threads", str(threads)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


# -- the report ----------------------------------------------------------------------


def overhead_lines(p: Pipeline, plan: Plan, threads: int) -> list[str]:
    local_ms = median([s.total_ms for s in p.local])
    service_ms = median([s.wall_ms for s in p.service])
    overhead = ratio(service_ms, local_ms)

    def stage_median(stage: str, phase: str) -> float:
        return median([s.stages[stage][phase] for s in p.service])

    rows = []
    for stage in STAGES:
        rows.append(
            [
                stage,
                fmt_ms(median([s.stages[stage] for s in p.local])),
                *(fmt_ms(stage_median(stage, ph)) for ph in PHASES),
                fmt_ms(median([s.png_ms[stage] for s in p.local])),
            ]
        )
    # The service job's time, decomposed exactly (per-round medians of each part).
    parts = {
        QUEUE: sum(stage_median(s, "queue_ms") for s in STAGES),
        LOAD: sum(stage_median(s, "load_inputs_ms") for s in STAGES),
        STORE: sum(stage_median(s, "store_output_ms") for s in STAGES),
        COMPUTE: sum(stage_median(s, "compute_ms") for s in STAGES) - local_ms,
        OUTSIDE: median(
            [s.wall_ms - sum(st["total_ms"] for st in s.stages.values()) for s in p.service]
        ),
    }
    largest = max(parts, key=lambda k: parts[k])
    rounds = len(p.service)
    per_round = [ratio(s.wall_ms, x.total_ms) for s, x in zip(p.service, p.local, strict=True)]
    # The same job with each stage's compute as measured in process: what the services
    # add around the models, free of the compute noise a shared machine puts on either mode.
    held = median(
        [
            ratio(
                x.total_ms + s.wall_ms - sum(st["compute_ms"] for st in s.stages.values()),
                x.total_ms,
            )
            for s, x in zip(p.service, p.local, strict=True)
        ]
    )
    lines = [
        f"## (1) Orchestration overhead: a {plan.job_px} px job through the services vs in process",
        "",
        f"Goal ≤ {OVERHEAD_GOAL:.2f}: **{verdict(overhead <= OVERHEAD_GOAL)}**, "
        f"**{fmt_ratio(overhead)}** (services {fmt_ms(service_ms)} ms / in process "
        f"{fmt_ms(local_ms)} ms, medians of {rounds} rounds; per round: "
        f"{', '.join(fmt_ratio(r) for r in per_round)}). With each stage's compute taken as "
        f"in process (everything the services add around the models, compute noise "
        f"removed): **{fmt_ratio(held)}**.",
        "",
        f'The job: base "{JOB["base"]}", style "{JOB["style"]}", no overlay text (so '
        f"refine runs img2img, no typography pass), {plan.job_px}×{plan.job_px}, the default "
        "pipeline (base 20 steps with guidance 7.5; refine img2img 40 steps × strength "
        "0.35; upscale ×4 learned, tiles 128, overlap 24). The fixture models accept sides "
        "16…1024 in multiples of 16 (tiny-sd) and 1…1024 (tiny-esrgan-x4, input side). "
        "**Services**: `LocalCluster` (orchestrator + base, refine, upscale processes, "
        f"`--torch-threads {threads}` each, local-folder store, SQLite), timed at the "
        "client from SubmitJob to WatchJob's `finished`. **In process**: the same three "
        "StageModel classes, loaded once in the benchmark process "
        f"(torch.set_num_threads({threads})), fed the requests the orchestrator builds "
        "(`with_defaults` + `build_run_request`, decoded by the stage codec) and handed "
        "PIL images directly. Each round uses a new seed for both modes (so the stage cache "
        "never answers) and alternates which mode runs first, after one unrecorded warm-up "
        "round. Parameters sent equal in every round: "
        f"**{'yes' if all(p.params_equal) else 'NO'}**; final PNG byte-identical "
        f"(sha256) in every round: **{'yes' if all(p.identical) else 'NO'}**.",
        "",
        *table(
            [
                "stage",
                "in process: run (ms)",
                "service: queue",
                "load inputs",
                "compute",
                "store output",
                "stage total",
                "in process: PNG encode (not counted)",
            ],
            rows,
        ),
        "",
        f"Job: in process {fmt_ms(local_ms)} ms; services {fmt_ms(service_ms)} ms. Where the "
        f"{fmt_ms(service_ms - local_ms)} ms difference goes (medians, so the parts need "
        "not add up exactly):",
        "",
        *(f"- {name}: {fmt_ms(value)} ms" for name, value in parts.items()),
        "",
        f"The largest part: {largest}.",
    ]
    if overhead > OVERHEAD_GOAL:
        lines += ["", f"Why the goal is missed, most likely: {WHY[largest]}"]
    elif held > OVERHEAD_GOAL:
        lines += [
            "",
            f"Met on the measured ratio, but with compute held equal the services add "
            f"{fmt_ratio(held)}, above the goal; most of it: {WHY[largest]}",
        ]
    return lines
    return lines


def cache_lines(p: Pipeline) -> list[str]:
    full = median([s.wall_ms for s in p.service])
    again = median([s.wall_ms for s in p.resubmit])
    rerun = median([s.wall_ms for s in p.rerun_last])
    all_hits = all(all(s.cache_hits.values()) for s in p.resubmit)
    partial = all(p.rerun_reused)
    upscale = median([s.stages["upscale"]["total_ms"] for s in p.rerun_last])
    return [
        "## (4) Stage cache: rerun vs full job",
        "",
        "After each service job of (1): the same job submitted again (a new job id, every "
        "stage's content address already known), then `RerunJob(from_stage=upscale)` of "
        "that job with only `upscale.tile_overlap` changed (24 → 25…, a value new each round). "
        "Client-side times, submit to `finished`; medians of "
        f"{len(p.service)} rounds. Every stage a cache hit on resubmit: "
        f"**{'yes' if all_hits else 'NO'}**; on the rerun base and refine outputs kept and "
        "only upscale computed anew: "
        f"**{'yes' if partial else 'NO'}**.",
        "",
        *table(
            ["what", "time (ms)", "vs full job"],
            [
                ["full job (3 stages computed)", fmt_ms(full), "1.00×"],
                ["same job again: 3 cache hits", fmt_ms(again), fmt_ratio(ratio(again, full))],
                [
                    "rerun from upscale, tile_overlap changed (the upscale stage's own total: "
                    f"{fmt_ms(upscale)} ms)",
                    fmt_ms(rerun),
                    fmt_ratio(ratio(rerun, full)),
                ],
            ],
        ),
    ]


def load_lines(
    loads: dict[str, list[LoadRow]], describe: dict[str, tuple[int, int]], plan: Plan
) -> list[str]:
    px = plan.stage_px
    rows = []
    for stage in STAGES:
        for row in loads[stage]:
            r = row.report
            lat = r["latency_ms"]
            errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
            rows.append(
                [
                    stage,
                    str(row.concurrency),
                    str(r["ok"]),
                    f"{r['throughput_rps']:.2f}",
                    fmt_ms(lat["p50"]),
                    fmt_ms(lat["p90"]),
                    fmt_ms(lat["p99"]),
                    errors,
                    fmt_ms(row.server("queue_ms")),
                    fmt_ms(row.server("compute_ms")),
                    f"{r['client']['cpu_utilisation']:.2f}",
                ]
            )
    limits = ", ".join(f"{s} {c} / {q}" for s, (c, q) in describe.items())
    return [
        "## (2) Per-stage throughput and latency (closed loop)",
        "",
        f"`stageflow.cli.loadgen.run_load` (the code behind `stageflow loadtest`), one client "
        f"process, {plan.load_s:g} s measured after {plan.load_warmup_s:g} s of warm-up per "
        "cell, against the stage processes of (1). Stage settings (max_concurrency / "
        f"max_queue, from Describe): {limits}: the defaults, so one call computes at a time "
        "and the rest wait in the stage's queue (the server queue column): throughput cannot "
        "grow past concurrency 1, only latency. "
        f"Requests: base txt2img {px}×{px}, 20 steps, guidance 7.5, a varied seed each; "
        f"refine img2img 40 steps × 0.35 on a {px}×{px} input; upscale ×4 of a {px}×{px} "
        "input (tiles 128, overlap 24); inputs seeded into the store once. Equivalent "
        "command for one cell: `stageflow loadtest --address HOST:PORT --kind txt2img "
        f"--width {px} --height {px} --steps 20 --concurrency 4 --duration {plan.load_s:g} "
        f"--warmup {plan.load_warmup_s:g}` (refine/upscale: `--kind refine --input-size "
        f"{px} --store-url file:///… --set steps=40 --set strength=0.35`). Latencies in ms; "
        "client CPU is the load tester's share of one core (the client runs on the same two "
        "cores as the stage, so it takes from it).",
        "",
        *table(
            [
                "stage",
                "concurrency",
                "requests",
                "req/s",
                "p50",
                "p90",
                "p99",
                "errors",
                "server queue (median)",
                "server compute (median)",
                "client CPU",
            ],
            rows,
            right=1,
        ),
    ]


def batching_lines(rows: list[BatchRow], plan: Plan, threads: int) -> list[str]:
    verdicts = ", ".join(
        f"{r.px} px {fmt_ratio(r.gain)} ({verdict(r.gain >= BATCHING_GOAL)})" for r in rows
    )
    table_rows = []
    for r in rows:
        table_rows.append(
            [
                f"{r.px} px",
                f"{rps(r.off):.2f}",
                f"{rps(r.on):.2f}",
                fmt_ratio(r.gain),
                fmt_ms(p50(r.off)),
                fmt_ms(p50(r.on)),
                fmt_ms(median([x["server_ms"]["compute_ms"]["median"] for x in r.on])),
            ]
        )
    met = all(r.gain >= BATCHING_GOAL for r in rows)
    lines = [
        f"## (3) Dynamic batching on vs off, concurrency {plan.batch_concurrency}, onnxruntime",
        "",
        f"Goal ≥ {BATCHING_GOAL:.1f}×: **{verdict(met)}**: {verdicts}.",
        "",
        "Two base stage processes over one `export_onnx` export of tiny-sd (fp32, opset 17): "
        "`python -m stageflow.services.base --model-path <onnx> --backend onnxruntime "
        "--torch-threads "
        f"{threads} --max-queue-delay-ms {BATCH_DELAY_MS:g} --max-batch-size 8` (on) and the "
        "same with `--max-batch-size 1` (off), max_concurrency 1 both. "
        f"`run_load` at concurrency {plan.batch_concurrency}, txt2img 20 steps with "
        f"guidance, varied seeds, {plan.batch_s:g} s measured per run; "
        f"{plan.batch_rounds} run(s) per mode and size, the modes alternating which goes "
        "first; medians. Batched compute is the whole batch's model call.",
        "",
        *table(
            [
                "size",
                "off: req/s",
                "on: req/s",
                "gain",
                "off: p50 (ms)",
                "on: p50 (ms)",
                "on: server compute (median ms)",
            ],
            table_rows,
        ),
    ]
    if not met:
        lines += [
            "",
            "Why the gain is small where it is, most likely: on a CPU a batch of 8 costs "
            "about 8 times the arithmetic of one request, and batching saves only the "
            "per-call overhead (the Python denoise loop, ONNX Runtime session calls, "
            "scheduler steps), which is a large share of the time only while the images "
            "are tiny. On a GPU, which batch 1 leaves mostly idle, batching has far more "
            "to gain.",
        ]
    return lines


def memory_lines(records: list[dict[str, Any]], threads: int) -> list[str]:
    rows = []
    extra = {}
    for rec in records:
        mode = "untiled (tile_size 0)" if rec["tile_size"] == 0 else f"tiles {rec['tile_size']}"
        extra[rec["tile_size"]] = (rec["peak_kb"] - rec["baseline_kb"]) / 1024
        rows.append(
            [
                mode,
                f"{rec['side']} → {rec['out_side']}",
                f"{rec['baseline_kb'] / 1024:.0f}",
                f"{rec['peak_kb'] / 1024:.0f}",
                f"{extra[rec['tile_size']]:.0f}",
                f"{rec['ru_maxrss_kb'] / 1024:.0f}",
                f"{rec['seconds']:.1f}",
            ]
        )
    side = records[0]["side"]
    saved = ratio(extra.get(0, float("nan")), extra.get(128, float("nan")))
    return [
        f"## (5) Tiled upscaler memory, {side} → {records[0]['out_side']} px",
        "",
        "Each mode in its own process: `.venv/bin/python bench/upscale_memory.py --model-path "
        f"models/tiny-esrgan-x4 --side {side} --tile-size 0|128 --threads {threads}` "
        "(overlap 24). Baseline: VmRSS once the model is loaded and the input made; peak: "
        "VmHWM after the upscale, the high-water mark reset after loading (via "
        "/proc/self/clear_refs; reset took: "
        f"{'yes' if all(r.get('peak_reset') for r in records) else 'NO'}), so the peak is "
        "the upscale's, not the model load's; ru_maxrss is the process's whole-life peak "
        "(getrusage; the kernel also folds the mark into it when a thread exits, so the "
        "reset may not reach it); the upscale's own time. Untiled needs "
        f"**{fmt_ratio(saved)}** the extra memory of tiled (one run each).",
        "",
        *table(
            [
                "mode",
                "px",
                "RSS after load (MiB)",
                "peak RSS (MiB)",
                "peak − load (MiB)",
                "ru_maxrss (MiB)",
                "s",
            ],
            rows,
        ),
    ]


def report_body(
    *,
    argv: Sequence[str],
    threads: int,
    plan: Plan,
    quick: bool,
    started: str,
    elapsed_s: float,
    load: tuple[float, float],
    pipe: Pipeline,
    loads: dict[str, list[LoadRow]],
    batch: list[BatchRow],
    memory: list[dict[str, Any]],
) -> str:
    import onnxruntime
    import torch

    command = " ".join([".venv/bin/python bench/serving.py", *argv])
    lines = [
        "# Serving benchmarks: overhead, per-stage load, batching, stage cache, memory",
        "",
    ]
    if quick:
        lines += ["**A `--quick` smoke run: small sizes, few repeats; not figures to quote.**", ""]
    lines += [
        f"- date: {started} (the whole run took {elapsed_s / 60:.1f} min)",
        f"- machine: {machine()}",
        f"- threads: {threads} torch / ONNX Runtime intra-op threads per stage process and in "
        "the in-process runs",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}",
        f"- command: `{command}` (`make bench-serving`; `make bench` runs this and "
        "bench/backends.py)",
        "- models: the fixtures under models/ (`make fixtures`): tiny-sd (~2M-parameter "
        "UNet, VAE /8, DDIM) and tiny-esrgan-x4, seeded random weights",
        "",
        "This machine is shared (other test suites run beside it): load average "
        f"{load[0]:.2f} when the run started, {load[1]:.2f} when it ended. The client, the "
        "orchestrator and the stages all share its two cores. Absolute times move between "
        "runs; the ratios, measured within one run with the modes alternating, are the "
        "numbers to read.",
        "",
        *overhead_lines(pipe, plan, threads),
        "",
        *load_lines(loads, pipe.describe, plan),
        "",
        *batching_lines(batch, plan, threads),
        "",
        *cache_lines(pipe),
        "",
        *memory_lines(memory, threads),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--threads", type=int, default=2, help="per stage process and in process")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run of every part")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="fixture models")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    models_dir = args.models.resolve()
    missing = [f for f in set(FOLDERS.values()) if not (models_dir / f).is_dir()]
    if missing:
        sys.exit(f"missing fixture models {missing} under {models_dir}: run `make fixtures`")

    started_at, t0 = utc_now(), time.perf_counter()
    load_start = os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    from stageflow.cli.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        scratch = Path(tmp)
        local = InProcess(models_dir, args.threads)
        log("starting the cluster")
        with LocalCluster(
            state_dir=scratch / "cluster", models_dir=models_dir, torch_threads=args.threads
        ) as cluster:
            addresses = cluster.addresses
            pipe = asyncio.run(pipeline(cluster.orchestrator_address, local, plan, log))
            pipe.describe = {s: describe_stage(addresses[s]) for s in STAGES}
            loads = stage_loads(addresses, cluster.store_url, plan, log)
        del local
        log("batching")
        batch = batching(models_dir, scratch, args.threads, plan, log)
        log("upscaler memory")
        memory = upscale_memory(models_dir, args.threads, plan.memory_side)
        for rec in memory:
            log(f"memory: {rec}")
    body = report_body(
        argv=argv,
        threads=args.threads,
        plan=plan,
        quick=args.quick,
        started=started_at,
        elapsed_s=time.perf_counter() - t0,
        load=(load_start, os.getloadavg()[0]),
        pipe=pipe,
        loads=loads,
        batch=batch,
        memory=memory,
    )
    write_section(args.out, SECTION, body)
    log(f"wrote the {SECTION} section of {args.out}")


if __name__ == "__main__":
    from stageflow.serving.processes import signals_interrupt

    with signals_interrupt():  # SIGTERM/SIGHUP stop the cluster and stages on the way out
        main()
