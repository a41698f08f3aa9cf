"""Per-image time of the real-scale job through the services: writes the
bench/perimage.py section of docs/benchmarks.md.

    .venv/bin/python bench/perimage.py [--folder var/realscale/sd15-random] [--side 512]
        [--steps 20] [--strength 0.5] [--config fp32-eager --config bf16 ...] [--threads 2]

The job of the reference workflow, end to end through real processes
(`LocalCluster`: orchestrator and three stage processes over gRPC, a local
folder store): the base stage at --side px, --steps steps with guidance; the
refine stage img2img (the same SD 1.5 folder, --strength); the x4 upscale with
the pretrained Real-ESRGAN x4plus from models/repository. Each configuration is
a set of stage flags and job options (`CONFIGS`), each in its own cluster (so
no stage cache is shared), the baseline fp32 eager first. Reported per
configuration: the job's wall time from submit to finished, each stage's
compute time, the ratio to the baseline, and the final and base images'
PSNR/SSIM against the baseline's. The folder comes from `bench/realscale.py
build`; `--folder models/tiny-sd --side 64 --steps 4` is a smoke run on the
fixture.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import fmt_ratio, machine, table, utc_now, write_section  # noqa: E402

SECTION = "bench/perimage.py"
STAGES = ("base", "refine", "upscale")
PROMPT = "epic game hero portrait, detailed armour"
UPSCALER = "realesrgan-x4plus@1"


@dataclass(frozen=True)
class Config:
    """One way to serve the job: flags per stage process, options per stage."""

    name: str
    summary: str
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


# The measured configurations name their layout: channels_last auto would turn it
# on for this folder.
FP32 = ("--dtype", "fp32", "--channels-last", "off")
BF16 = ("--dtype", "bf16", "--channels-last", "off")

CONFIGS = {
    c.name: c
    for c in (
        Config(
            "fp32-eager",
            "fp32 weights, eager torch, contiguous, every stage (the baseline)",
            flags={"base": FP32, "refine": FP32, "upscale": FP32},
        ),
        Config(
            "bf16",
            "bf16 weights on base and refine (dtype auto picks it on this CPU), contiguous; "
            "the upscale stage fp32",
            flags={"base": BF16, "refine": BF16, "upscale": FP32},
        ),
        Config(
            "bf16-cache2",
            "bf16, and step caching every 2nd step on base and refine; the upscale stage fp32",
            flags={"base": BF16, "refine": BF16, "upscale": FP32},
            options={"base": {"cache_interval": 2}, "refine": {"cache_interval": 2}},
        ),
        Config(
            "defaults",
            "the stages' defaults: dtype auto and channels_last auto (on a CPU with native "
            "bf16, bf16 and channels_last for this folder; the upscaler in bf16 and "
            "channels_last with AMX, fp32 and channels_last without)",
            flags={},
        ),
        Config(
            "bf16-upscale",
            "the stages' defaults, and the upscale stage set to bf16 and channels_last "
            "(what its autos choose with AMX; without, dtype auto keeps it fp32)",
            flags={"upscale": ("--dtype", "bf16", "--channels-last", "on")},
        ),
    )
}


@dataclass
class Run:
    config: Config
    wall_s: float
    compute_s: dict[str, float]
    images: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]


def _array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def one_job(address: str, config: Config, args: argparse.Namespace) -> Run:
    from stageflow.client import StageflowClient
    from stageflow.v1 import orchestrator_pb2 as pb

    async with StageflowClient(address) as client:
        started = time.perf_counter()
        job = await client.submit(
            base=PROMPT,
            seed=args.seed,
            width=args.side,
            height=args.side,
            stages=list(STAGES),
            base_options={"steps": args.steps, **config.options.get("base", {})},
            refine_options={
                "steps": args.steps,
                "strength": args.strength,
                **config.options.get("refine", {}),
            },
        )
        async for event in client.watch(job.job_id):
            if event.HasField("finished"):
                job = event.finished
                break
        wall = time.perf_counter() - started
        if job.state != pb.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"{config.name}: {pb.JobState.Name(job.state)}: {job.error}")
        images = {stage: _array(await client.download(job.job_id, stage=stage)) for stage in STAGES}
    return Run(
        config=config,
        wall_s=wall,
        compute_s={run.stage: run.timing.compute_ms / 1000 for run in job.stages},
        images=images,
        sizes={s: images[s].shape[1::-1] for s in STAGES},
    )


def run_config(config: Config, args: argparse.Namespace, log: Any) -> Run:
    from stageflow.cli.cluster import LocalCluster
    from stageflow.cli.main import _demo_upscaler

    folder = str(args.folder.resolve())
    stage_args = {
        "base": ["--model-path", folder, *config.flags.get("base", ())],
        "refine": ["--model-path", folder, *config.flags.get("refine", ())],
        "upscale": [
            *_demo_upscaler(args.upscaler, args.repository),
            *config.flags.get("upscale", ()),
        ],
    }
    with tempfile.TemporaryDirectory(prefix="bench-perimage-") as tmp:
        log(f"{config.name}: starting the cluster")
        with LocalCluster(
            state_dir=Path(tmp) / "cluster",
            models_dir=ROOT / "models",
            torch_threads=args.threads,
            stage_args=stage_args,
        ) as cluster:
            run = asyncio.run(one_job(cluster.orchestrator_address, config, args))
    log(
        f"{config.name}: {run.wall_s:.1f} s ("
        + ", ".join(f"{s} {t:.1f} s" for s, t in run.compute_s.items())
        + ")"
    )
    return run


def scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """PSNR (dB; inf when identical) and SSIM of `b` against `a`."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(a, b):
        return float("inf"), 1.0
    psnr = float(peak_signal_noise_ratio(a, b, data_range=255))
    ssim = float(structural_similarity(a, b, channel_axis=2, data_range=255))
    return psnr, ssim


def _db(value: float) -> str:
    return "identical" if value == float("inf") else f"{value:.1f} dB"


def report(
    runs: list[Run], args: argparse.Namespace, started: str, load: tuple[float, float]
) -> str:
    from stageflow.inference.hardware import cpu_flags

    base = runs[0]
    rows = []
    for run in runs:
        final = scores(base.images["upscale"], run.images["upscale"])
        first = scores(base.images["base"], run.images["base"])
        rows.append(
            [
                f"`{run.config.name}`",
                f"{run.wall_s:.1f} s",
                *(f"{run.compute_s.get(s, float('nan')):.1f} s" for s in STAGES),
                fmt_ratio(base.wall_s / run.wall_s),
                f"{_db(final[0])} / {final[1]:.3f}",
                _db(first[0]),
            ]
        )
    best = max(runs[1:], key=lambda r: base.wall_s / r.wall_s, default=None)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "fma")))
    amx = any(f.startswith("amx") for f in flags)
    argv = sys.argv[1:]
    cmd = "`" + shlex.join([".venv/bin/python", "bench/perimage.py", *argv]) + "`"
    if not argv:
        cmd += " (`make bench-perimage`)"
    lines = [
        "## Per image: the real-scale job through the services",
        "",
        f"{cmd}, {started}, load average {load[0]:.1f} → {load[1]:.1f}.",
        "",
        f"- machine: {machine()}",
        f"- CPU flags that decide the kernels: {', '.join(flags) or 'none of avx2/fma/avx512/amx'}",
        f"- job: base {args.side} px, {args.steps} steps with guidance; refine img2img "
        f"(strength {args.strength}, the same folder); x4 upscale with {args.upscaler} "
        f"to {runs[0].sizes['upscale'][0]} px; folder `{_shown(args.folder)}`; "
        f"{args.threads} torch thread(s) per stage; one job per configuration, each in its own "
        "cluster (orchestrator + three stage processes over gRPC), the baseline first.",
        "",
    ]
    lines += table(
        [
            "configuration",
            "job (submit to finished)",
            "base",
            "refine",
            "upscale",
            "× faster than fp32 eager",
            "final image PSNR / SSIM vs fp32",
            "base image PSNR",
        ],
        rows,
    )
    lines += ["", "Configurations:"]
    lines += [f"- `{r.config.name}`: {r.config.summary}" for r in runs]
    if best is not None:
        gain = base.wall_s / best.wall_s
        psnr = scores(base.images["upscale"], best.images["upscale"])[0]
        if amx:
            verdict = (
                f"goal on an AMX CPU: ≥ 2.5× with PSNR ≥ 30 dB: "
                f"{'met' if gain >= 2.5 and psnr >= 30 else 'NOT met'}"
            )
        else:
            verdict = (
                "this CPU has no AMX (the ≥ 2.5× goal is for AMX); what the best "
                "configuration gains here is the figure"
            )
        lines += [
            "",
            f"Best: `{best.config.name}`, {gain:.2f}× the baseline's whole job, final image "
            f"{_db(psnr)} from fp32 ({verdict}).",
        ]
        # Set to fp32, or left to auto on a CPU without AMX (auto's fp32 there).
        fp32_upscale = [
            r.config.name
            for r in runs[1:]
            if r.config.flags.get("upscale", () if amx else FP32) == FP32
        ]
        if fp32_upscale:
            lines[-1] += (
                f" The upscale stage runs fp32 in {', '.join(f'`{n}`' for n in fp32_upscale)}, "
                "so its seconds bound their gain."
            )
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT / "var/realscale/sd15-random")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upscaler", default=UPSCALER)
    parser.add_argument("--repository", type=Path, default=ROOT / "models/repository")
    parser.add_argument(
        "--config", action="append", choices=sorted(CONFIGS), help="default: all, baseline first"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if not (args.folder / "model_index.json").is_file():
        sys.exit(f"no diffusers folder at {args.folder}: run `bench/realscale.py build`")
    names = ["fp32-eager", *[n for n in (args.config or CONFIGS) if n != "fp32-eager"]]
    started, t0, load0 = utc_now(), time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    runs = [run_config(CONFIGS[name], args, log) for name in names]
    # A run of some configurations writes its own section beside the whole one.
    section = SECTION if set(names) == set(CONFIGS) else f"{SECTION} {','.join(names[1:])}"
    write_section(args.out, section, report(runs, args, started, (load0, os.getloadavg()[0])))
    log(f"wrote the {section} section of {args.out}")


if __name__ == "__main__":
    from stageflow.serving.processes import signals_interrupt

    with signals_interrupt():
        main()
