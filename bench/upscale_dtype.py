"""The torch upscaler per dtype and memory format, with AMX and without: what its
dtype=auto rule (stageflow.inference.hardware.UPSCALER_AUTO_BF16) rests on.

    .venv/bin/python bench/upscale_dtype.py            # writes docs/benchmarks.md

Each upscaler of the model repository (Real-ESRGAN x4plus and animevideov3, the
weights `make setup` imports) runs one 128 px tile (the stage's default tile) in
fp32 and bf16, contiguous and channels_last, rounds interleaved, through the
upscale stage's own loader (`the torch backend's `upscaler``). "Without AMX" is the
same CPU with oneDNN, which runs torch's CPU convolutions, capped at AVX-512
BF16 (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`): the instructions a CPU with
avx512_bf16 and no AMX has, on this CPU's cores and caches, so an approximation
of such a CPU, not one. Each setting runs in a process of its own (oneDNN reads
the variable once). Ratios are within one process; the PSNR is of bf16's tile
against fp32's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine, table, utc_now, write_section  # noqa: E402

SECTION = "bench/upscale_dtype.py"
MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4")
ISAS = {"with AMX": "", "without AMX (oneDNN capped at AVX512_CORE_BF16)": "AVX512_CORE_BF16"}
CONFIGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def measure(folder: Path, tile: int, rounds: int, threads: int) -> dict[str, object]:
    """In this process: seconds per tile for each configuration, and bf16's PSNR."""
    import torch

    from stageflow.inference import backends

    torch.set_num_threads(threads)
    pixels = torch.rand((1, 3, tile, tile), generator=torch.Generator().manual_seed(0))
    runtime = backends.backend("torch")
    nets = {
        (dtype, layout): runtime.upscaler(
            folder, backends.BackendOptions(dtype=dtype, channels_last=layout)
        )[0]
        for dtype, layout in CONFIGS
    }
    seconds: dict[str, list[float]] = {}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for net in nets.values():
            net(pixels[..., :32, :32])  # first call: oneDNN picks its kernels
        for _ in range(rounds):
            for (dtype, layout), net in nets.items():
                start = time.perf_counter()
                out = net(pixels).float()
                seconds.setdefault(_label(dtype, layout), []).append(time.perf_counter() - start)
                outputs[dtype] = out.clamp(0, 1)
    mse = float(((outputs["fp32"] - outputs["bf16"]) ** 2).mean())
    return {
        "seconds": {k: statistics.median(v) for k, v in seconds.items()},
        "psnr_db": 10 * math.log10(1 / mse) if mse else math.inf,
    }


def _label(dtype: str, layout: bool) -> str:
    return f"{dtype}{' channels_last' if layout else ''}"


def run_child(args: argparse.Namespace, folder: Path, isa: str) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    cmd = [sys.executable, __file__, "--child", str(folder), "--tile", str(args.tile)]
    cmd += ["--rounds", str(args.rounds), "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, results: dict[str, dict[str, dict]], started: str) -> str:
    lines = [
        "## The torch upscaler: dtype and memory format, with AMX and without",
        "",
        "`.venv/bin/python bench/upscale_dtype.py` (`make bench-upscale-dtype`), "
        f"{started}; one {args.tile} px tile, "
        f"median of {args.rounds} interleaved rounds, {args.threads} torch threads.",
        "",
        f"- machine: {machine()}",
        "",
    ]
    header = ["upscaler", "CPU", *(_label(d, c) for d, c in CONFIGS), "bf16 PSNR vs fp32"]
    rows = []
    for model, by_isa in results.items():
        for isa, result in by_isa.items():
            seconds = result["seconds"]
            fp32 = seconds["fp32"]
            cells = [f"{seconds[k]:.3f} s ({fp32 / seconds[k]:.2f}×)" for k in seconds]
            rows.append([model, isa, *cells, f"{result['psnr_db']:.1f} dB"])
    lines += table(header, rows, right=2)
    lines += [
        "",
        "(×: fp32 contiguous's time over the configuration's, in the same process.)",
        "dtype=auto serves the upscaler in bf16 only with AMX "
        "(stageflow.inference.hardware.UPSCALER_AUTO_BF16): the rows without AMX are "
        "why it stays fp32 there. channels_last=auto is on for it in either dtype: "
        "it is faster in every row.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.tile, args.rounds, args.threads)))
        return
    started = utc_now()
    results: dict[str, dict[str, dict]] = {}
    for model in MODELS:
        folder = args.repository / model / "1"
        for isa_name, isa in ISAS.items():
            print(f"{model}, {isa_name} ...", flush=True)
            results.setdefault(model, {})[isa_name] = run_child(args, folder, isa)
            print(json.dumps(results[model][isa_name]), flush=True)
    write_section(args.out, SECTION, report(args, results, started))
    print(f"wrote the {SECTION} section of {args.out}")


if __name__ == "__main__":
    main()
