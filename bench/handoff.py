"""Latent vs PNG hand-off: writes the bench/handoff.py section of docs/benchmarks.md.

    .venv/bin/python bench/handoff.py [--threads 1] [--rounds 5] [--sizes 64,256] [--quick]

Whole jobs (base -> refine) through real processes (`LocalCluster`: the
orchestrator and the stage processes over gRPC, local-folder store) on the
SD 1.5 fixture (models/tiny-sd), client-side from submit to `finished`:

- latent: the `latent-handoff` spec: the base runs its schedule to
  denoising_end 0.8 and writes its latents (safetensors); the refine stage
  resumes the same schedule at denoising_start 0.8 and decodes once.
- png: the `default` spec's image hand-off as SDXL's refiner is otherwise
  used: the base runs its whole schedule, decodes and writes a PNG; the
  refine stage reads it, VAE-encodes it, re-noises it to strength 0.2 (the
  same last 20% of the schedule) and decodes.

Both run the same steps on both stages and the same seed per round (a new
seed each round, so the stage cache never answers); the two modes alternate
which goes first. The ratio latent / png within one run is the number to read
on this shared machine; per-stage compute times say where the difference is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
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
    write_section,
)

SECTION = "bench/handoff.py"
STAGES = ("base", "refine")
STEPS, SPLIT = 20, 0.8
BASE = "a red circle on a blue background"
MODES = ("latent", "png")


@dataclass
class Sample:
    wall_ms: float
    compute_ms: dict[str, float]
    stage_ms: dict[str, float]
    handoff_bytes: int
    handoff_type: str


@dataclass
class Result:
    px: int
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {m: [] for m in MODES})

    def wall(self, mode: str) -> float:
        return median([s.wall_ms for s in self.samples[mode]])

    def stage(self, mode: str, stage: str, what: str = "compute_ms") -> float:
        return median([getattr(s, what)[stage] for s in self.samples[mode]])


def job_kwargs(mode: str, px: int, seed: int) -> dict[str, Any]:
    common: dict[str, Any] = {
        "base": BASE,
        "seed": seed,
        "width": px,
        "height": px,
        "stages": list(STAGES),
        "base_options": {"steps": STEPS},
    }
    if mode == "latent":
        return {**common, "pipeline": "latent-handoff", "refine_options": {"steps": STEPS}}
    # The same last 20% of the same schedule, from a decoded and re-encoded image.
    strength = round(1 - SPLIT, 6)
    return {**common, "refine_options": {"steps": STEPS, "strength": strength}}


async def timed_job(client: Any, mode: str, px: int, seed: int) -> Sample:
    from stageflow.v1 import orchestrator_pb2 as pb

    started = time.perf_counter()
    job = await client.submit(**job_kwargs(mode, px, seed))
    async for event in client.watch(job.job_id):
        if event.HasField("finished"):
            job = event.finished
            break
    wall = (time.perf_counter() - started) * 1000
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"{mode} job {job.job_id}: {pb.JobState.Name(job.state)}: {job.error}")
    runs = {run.stage: run for run in job.stages}
    if any(run.cache_hit for run in job.stages):
        raise RuntimeError(f"{mode} job {job.job_id} hit the stage cache: seeds must differ")
    return Sample(
        wall_ms=wall,
        compute_ms={s: runs[s].timing.compute_ms for s in STAGES},
        stage_ms={s: runs[s].timing.total_ms for s in STAGES},
        handoff_bytes=runs["base"].output.size_bytes,
        handoff_type=runs["base"].output.media_type,
    )


async def measure(address: str, sizes: Sequence[int], rounds: int, log: Any) -> list[Result]:
    from stageflow.client import StageflowClient

    results = []
    async with StageflowClient(address) as client:
        for px in sizes:
            result = Result(px)
            for mode in MODES:  # warm-up: first calls pay lazy inits
                await timed_job(client, mode, px, seed=10_000 + px)
            for r in range(rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    sample = await timed_job(client, mode, px, seed=px * 1000 + r)
                    result.samples[mode].append(sample)
                log(
                    f"{px} px round {r + 1}/{rounds}: "
                    + ", ".join(f"{m} {result.samples[m][-1].wall_ms:.0f} ms" for m in MODES)
                )
            results.append(result)
    return results


def report_body(
    results: Sequence[Result],
    *,
    argv: Sequence[str],
    threads: int,
    rounds: int,
    started: str,
    elapsed_s: float,
    load: tuple[float, float],
    quick: bool,
) -> str:
    lines = [
        "# Latent vs PNG hand-off between base and refine",
        "",
        f"- date: {started}",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/handoff.py {' '.join(argv)}`".rstrip()
        + " (`make bench-handoff`)",
        f"- setup: `LocalCluster` (orchestrator + base and refine processes over gRPC, "
        f"local-folder store), {threads} torch thread(s) per stage, models/tiny-sd (the SD 1.5 "
        f"fixture), {STEPS} steps on both stages, guidance 7.5; medians of {rounds} rounds "
        f"per size after one warm-up job per mode; {elapsed_s:.0f} s in all",
        f"- load average {load[0]:.2f} when it started, {load[1]:.2f} when it ended",
        "",
        "**latent**: the `latent-handoff` spec, base to denoising_end 0.8 (16 of 20 steps), "
        "its latents (safetensors) to refine, which resumes at denoising_start 0.8 (4 steps) "
        "and decodes. **png**: the image hand-off: base runs all 20 steps and decodes to a "
        "PNG; refine VAE-encodes it and runs the last 4 steps of its 20 at strength 0.2. So "
        "latent saves the base's last 4 UNet steps (which png's refine re-runs on a "
        "re-noised image), one VAE decode and one VAE encode, and the PNG encode and decode.",
        "",
    ]
    if quick:
        lines += ["**--quick run: a smoke test of the script, not figures to quote.**", ""]
    rows = []
    for res in results:
        lat, png = res.wall("latent"), res.wall("png")
        rows.append(
            [
                f"{res.px} px",
                fmt_ms(lat),
                fmt_ms(png),
                fmt_ratio(ratio(lat, png)),
                fmt_ms(res.stage("latent", "base")),
                fmt_ms(res.stage("png", "base")),
                fmt_ms(res.stage("latent", "refine")),
                fmt_ms(res.stage("png", "refine")),
                f"{res.samples['latent'][0].handoff_bytes} / {res.samples['png'][0].handoff_bytes}",
            ]
        )
    lines += table(
        [
            "size",
            "latent job (ms)",
            "png job (ms)",
            "latent / png",
            "base compute, latent",
            "base compute, png",
            "refine compute, latent",
            "refine compute, png",
            "hand-off bytes (latents / PNG)",
        ],
        rows,
    )
    lines += [
        "",
        "Job times are client-side, submit to `finished` (both stages, the orchestrator's "
        "bookkeeping and the store writes). Compute times are each stage's own (its "
        "StageResult timing). The outputs differ between modes (the png refine starts from a "
        "decoded, re-encoded and re-noised image): this measures cost, not equality "
        "(tests/integration/test_latent_handoff.py checks the latent path against diffusers).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="64,256", help="comma-separated image sides")
    parser.add_argument("--quick", action="store_true", help="one round at 64 px")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="fixture models")
    args = parser.parse_args(argv)
    sizes = [64] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    models_dir = args.models.resolve()
    if not (models_dir / "tiny-sd").is_dir():
        sys.exit(f"no tiny-sd under {models_dir}: run `make fixtures`")
    started, t0, load_start = utc_now(), time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    from stageflow.cli.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        log("starting the cluster")
        with LocalCluster(
            state_dir=Path(tmp) / "cluster",
            models_dir=models_dir,
            torch_threads=args.threads,  # all three stages: the specs name upscale
        ) as cluster:
            results = asyncio.run(measure(cluster.orchestrator_address, sizes, rounds, log))
    body = report_body(
        results,
        argv=argv,
        threads=args.threads,
        rounds=rounds,
        started=started,
        elapsed_s=time.perf_counter() - t0,
        load=(load_start, os.getloadavg()[0]),
        quick=args.quick,
    )
    write_section(args.out, SECTION, body)
    log(f"wrote the {SECTION} section of {args.out}")


if __name__ == "__main__":
    from stageflow.serving.processes import signals_interrupt

    with signals_interrupt():
        main()
