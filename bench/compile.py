"""Compiled graphs and weight dtypes: eager fp32 vs torch.compile (inductor), channels_last
and bf16 (fp16 too on CUDA), alone and combined; writes its section of docs/benchmarks.md.

    .venv/bin/python bench/compile.py [--threads 1] [--side 128] [--steps 10] [--rounds 5]
    .venv/bin/python bench/compile.py --folder var/realscale/sd15-random --side 512 --steps 20
    .venv/bin/python bench/compile.py --device cuda --folder ... --side 512 --steps 20

The base stage's model in-process (`Txt2ImgModel.run`, torch backend), one
model per configuration, each loaded with the stage's `dtype`, `compile` and
`channels_last` settings. For each configuration:

- compile seconds: the first call of the UNet and of the VAE decode at the
  bench's shape (`stageflow.inference.compiled.CompiledPart.compile_seconds`:
  the compile and one run), and the first image's time. Inductor's on-disk
  cache starts empty (a fresh folder, as on a new pod) unless
  `--inductor-cache` names one: a warm cache compiles in seconds;
- per denoising step, the UNet call's time (the loop's own calls, timed),
  per image the VAE decode's and the whole image's (text encoding, the loop,
  the decode); each as its median and as the median over rounds of its ratio
  to eager's in the same round (the number to read);
- how far each image is from eager fp32's (same prompt and seed): the largest
  difference in 8-bit levels, and the lowest PSNR over the rounds.

Rounds are interleaved: each round renders one image per configuration, in
a rotating order, so a slow spell of this shared machine falls on all of them.
Defaults: the tiny SD fixture (models/tiny-sd) at its native 128 px: the
numbers say what the mechanism costs there, not what it gains at real scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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

SECTION = "bench/compile.py"
FIXTURE = ROOT / "models" / "tiny-sd"
PROMPT = "epic game hero portrait"
SIDE, STEPS, ROUNDS = 128, 10, 5


@dataclass(frozen=True)
class Config:
    compile: str
    channels_last: bool
    dtype: str = "fp32"

    @property
    def label(self) -> str:
        parts = [] if self.dtype == "fp32" else [self.dtype]
        parts += [] if self.compile == "off" else [self.compile]
        parts += ["channels_last"] if self.channels_last else []
        return " + ".join(parts) or "eager"


# The weight dtypes worth measuring per device: CPUs have no fast fp16 kernels.
DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}


def configs_for(device: str) -> tuple[Config, ...]:
    """Every dtype of the device with each graph option; eager fp32 first."""
    kind = device.split(":")[0]
    return tuple(
        Config(mode, layout, dtype)
        for dtype in DTYPES.get(kind, DTYPES["cpu"])
        for mode, layout in (("off", False), ("inductor", False), ("off", True), ("inductor", True))
    )


CONFIGS = configs_for("cpu")
EAGER = CONFIGS[0]
# What a run without --configs measures: the graph options in fp32.
DEFAULT_LABELS = tuple(c.label for c in CONFIGS if c.dtype == "fp32")


@dataclass
class Samples:
    first_image_s: float = 0.0
    compile_s: dict[str, float] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    step_ratios: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    decode_ratios: list[float] = field(default_factory=list)
    image_ms: list[float] = field(default_factory=list)
    image_ratios: list[float] = field(default_factory=list)
    max_levels: int = 0
    min_psnr_db: float = float("inf")


def no_sync() -> None:
    return None


class Timed:
    """A part's callable that records each call's milliseconds (`sync` waits for
    the device's queued work: CUDA runs asynchronously)."""

    def __init__(self, fn: Callable[..., Any], sync: Callable[[], None] = no_sync) -> None:
        self.fn, self.sync = fn, sync
        self.ms: list[float] = []

    def __call__(self, *args: Any) -> Any:
        self.sync()
        started = time.perf_counter()
        out = self.fn(*args)
        self.sync()
        self.ms.append((time.perf_counter() - started) * 1000)
        return out


@dataclass
class Render:
    image: Any
    image_ms: float
    step_ms: float
    decode_ms: float


def device_sync(device: str) -> Callable[[], None]:
    if not device.startswith("cuda"):
        return no_sync
    import torch

    return torch.cuda.synchronize


def render(model: Any, args: argparse.Namespace, seed: int) -> Render:
    """One image, its UNet steps and decode timed inside the real loop."""
    from stageflow.inference.interface import StageInputs, Txt2ImgParams

    parts = model.parts
    sync = device_sync(args.device)
    unet, decode = Timed(parts.predict_noise, sync), Timed(parts.decode_latents, sync)
    model._parts = dataclasses.replace(parts, predict_noise=unet, decode_latents=decode)
    params = Txt2ImgParams(
        prompt=PROMPT, width=args.side, height=args.side, steps=args.steps, seed=seed
    )
    try:
        started = time.perf_counter()
        image = model.run(params, StageInputs(), lambda i, n: None, lambda: False)
        image_ms = (time.perf_counter() - started) * 1000
    finally:
        model._parts = parts
    return Render(image, image_ms, median(unet.ms), median(decode.ms))


def max_levels(image: Any, reference: Any) -> int:
    import numpy as np

    a, b = np.asarray(image).astype(int), np.asarray(reference).astype(int)
    return int(np.abs(a - b).max())


def psnr_db(image: Any, reference: Any) -> float:
    import numpy as np

    a, b = np.asarray(image).astype(float), np.asarray(reference).astype(float)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def add_round(results: dict[Config, Samples], renders: dict[Config, Render]) -> None:
    """One round's renders into the samples, each ratio against eager's in it."""
    base = renders[EAGER]
    for cfg, r in renders.items():
        res = results[cfg]
        res.step_ms.append(r.step_ms)
        res.step_ratios.append(ratio(r.step_ms, base.step_ms))
        res.decode_ms.append(r.decode_ms)
        res.decode_ratios.append(ratio(r.decode_ms, base.decode_ms))
        res.image_ms.append(r.image_ms)
        res.image_ratios.append(ratio(r.image_ms, base.image_ms))
        res.max_levels = max(res.max_levels, max_levels(r.image, base.image))
        res.min_psnr_db = min(res.min_psnr_db, psnr_db(r.image, base.image))


def measure(
    models: dict[Config, Any], args: argparse.Namespace, log: Callable[[str], None]
) -> dict[Config, Samples]:
    from stageflow.inference.compiled import compile_seconds

    results = {cfg: Samples() for cfg in models}
    # The first image of each: where a compiled configuration compiles its shapes.
    for cfg, model in models.items():
        started = time.perf_counter()
        render(model, args, seed=10_000)
        results[cfg].first_image_s = time.perf_counter() - started
        results[cfg].compile_s = compile_seconds(model.parts)
        log(f"{cfg.label}: first image {results[cfg].first_image_s:.1f} s")
    configs = list(models)  # eager first
    for n in range(args.rounds):
        shift = n % len(configs)
        order = [*configs[shift:], *configs[:shift]]
        renders = {cfg: render(models[cfg], args, seed=n) for cfg in order}
        add_round(results, {cfg: renders[cfg] for cfg in configs})
        log(
            f"round {n + 1}/{args.rounds}: "
            + ", ".join(f"{c.label} {renders[c].step_ms:.1f} ms/step" for c in configs)
        )
    return results


def fmt_compile(seconds: dict[str, float], part: str) -> str:
    found = [s for key, s in seconds.items() if key.startswith(part + " ")]
    return f"{sum(found):.1f}" if found else "–"


def report_body(
    results: dict[Config, Samples],
    *,
    argv: Sequence[str],
    args: argparse.Namespace,
    started: str,
    elapsed_s: float,
    load: tuple[float, float],
    torch_version: str,
) -> str:
    shown = args.shown
    cache = "the given folder" if args.inductor_cache else "a fresh, empty folder (cold)"
    dtypes = sorted({cfg.dtype for cfg in results}, key=("fp32", "fp16", "bf16").index)
    where = "CPU" if args.device == "cpu" else f"`{args.device}` ({args.device_name})"
    lines = [
        "# Compiled graphs: torch.compile (inductor) and channels_last on "
        + where
        + ("" if dtypes == ["fp32"] else f", weights in {' and '.join(dtypes)}"),
        "",
        f"- date: {started}",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/compile.py {shlex.join(argv)}`".rstrip()
        + ("" if argv else " (`make bench-compile`)"),
        f"- setup: `Txt2ImgModel.run` in-process on {shown} (torch {torch_version}, "
        f"weights in each configuration's dtype, fp32 unless named), "
        f"{args.threads} torch thread(s), {args.side} px, {args.steps} steps, guidance 7.5; "
        f"one model per configuration; inductor's cache in {cache}; one first image per "
        f"configuration, then {args.rounds} rounds of one image each, the configurations "
        f"interleaved in a rotating order; {elapsed_s:.0f} s in all",
        f"- load average {load[0]:.2f} when it started, {load[1]:.2f} when it ended",
        "",
        "**compile s**: the first call at the bench's shape of the UNet (a guided batch of 2) "
        "and of the VAE decode, compile and one run (what a stage's `warmup` moves into its "
        "start); **first image**: the whole first image. Per step: the UNet call inside the "
        "loop; the ratios are medians over rounds of each round's time over eager's in the "
        "same round. **levels**: the largest difference of any image from eager fp32's (same "
        "seed), in 8-bit levels; **PSNR**: the lowest over the rounds (∞: identical). The "
        "configurations of a run share one inductor process and cache folder: the first "
        "compiled one also pays inductor's one-time start-up (its compile workers), and the "
        "second may find kernels the first built; the first's compile seconds are the "
        "cold-pod figure.",
        "",
    ]
    header = [
        "configuration",
        "compile s UNet",
        "compile s VAE",
        "first image s",
        "ms / step",
        "× eager",
        "decode ms",
        "× eager",
        "ms / image",
        "× eager",
        "levels",
        "PSNR dB",
    ]
    rows = []
    for cfg, res in results.items():
        eager = cfg == EAGER
        rows.append(
            [
                cfg.label,
                fmt_compile(res.compile_s, "unet"),
                fmt_compile(res.compile_s, "vae_decoder"),
                f"{res.first_image_s:.1f}",
                fmt_ms(median(res.step_ms)),
                "1.00×" if eager else fmt_ratio(median(res.step_ratios)),
                fmt_ms(median(res.decode_ms)),
                "1.00×" if eager else fmt_ratio(median(res.decode_ratios)),
                fmt_ms(median(res.image_ms)),
                "1.00×" if eager else fmt_ratio(median(res.image_ratios)),
                "0" if eager else str(res.max_levels),
                "∞" if eager or res.min_psnr_db == float("inf") else f"{res.min_psnr_db:.1f}",
            ]
        )
    lines += table(header, rows)
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--folder", type=Path, default=FIXTURE, help="a diffusers SD folder")
    parser.add_argument("--side", type=int, default=SIDE)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--inductor-cache",
        type=Path,
        default=None,
        help="inductor's cache folder (TORCHINDUCTOR_CACHE_DIR); default a fresh one: cold",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_LABELS),
        help="comma-separated labels to measure (eager is always measured, first); "
        "default the fp32 graph options",
    )
    args = parser.parse_args(argv)
    known = configs_for(args.device)
    labels = {c.label: c for c in known}
    wanted = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in labels]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(labels)}")
    args.configs = [c for c in known if c == EAGER or c.label in wanted]
    args.device_name = args.device
    args.shown = args.folder.relative_to(ROOT) if args.folder == FIXTURE else args.folder
    args.folder = args.folder.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if not (args.folder / "unet").is_dir():
        sys.exit(f"{args.folder}: not a diffusers folder (no unet/)")
    started, t0, load_start = utc_now(), time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="inductor-") as fresh:
        # Read when inductor first compiles: set before torch is imported.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.inductor_cache or fresh)
        import torch

        from stageflow.inference.registry import create_model

        torch.set_num_threads(args.threads)
        if args.device.startswith("cuda"):
            args.device_name = torch.cuda.get_device_name(torch.device(args.device))
        models: dict[Config, Any] = {}
        try:
            for cfg in args.configs:
                model: Any = create_model(
                    "sd-txt2img",
                    args.folder,
                    torch_threads=args.threads,
                    device=args.device,
                    dtype=cfg.dtype,
                    compile=cfg.compile,
                    channels_last=cfg.channels_last,
                )
                model.load()
                models[cfg] = model
            log(f"loaded {len(models)} models of {args.folder}")
            results = measure(models, args, log)
        finally:
            for model in models.values():
                model.unload()
    body = report_body(
        results,
        argv=argv,
        args=args,
        started=started,
        elapsed_s=time.perf_counter() - t0,
        load=(load_start, os.getloadavg()[0]),
        torch_version=torch.__version__,
    )
    section = section_name(args)
    write_section(args.out, section, body)
    log(f"wrote the {section} section of {args.out}")


def section_name(args: argparse.Namespace) -> str:
    """One section per folder, device and set of configurations, so that runs of
    other sets sit beside the default one instead of replacing it."""
    section = SECTION if args.folder == FIXTURE.resolve() else f"{SECTION} {args.folder.name}"
    if args.device != "cpu":
        section += f" {args.device}"
    labels = tuple(c.label for c in args.configs)
    if labels != DEFAULT_LABELS:
        section += " " + ",".join(labels[1:])
    return section


if __name__ == "__main__":
    main()
