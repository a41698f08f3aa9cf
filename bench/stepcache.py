"""Step caching (DeepCache): speed against quality; writes its section of docs/benchmarks.md.

    .venv/bin/python bench/stepcache.py [--threads 1] [--intervals 1,2,3,5] [--depths all]
    .venv/bin/python bench/stepcache.py --folder var/realscale/sd15-random --side 512 --steps 20
        (2 images x intervals 1,2,3,5 at depth 0, plus 2 warm-up images: 10 SD 1.5 images)

The base stage's model in-process (`Txt2ImgModel.run`, validation included,
torch backend), one image per call: every (interval, depth) configuration
renders the same prompts and seeds, the configurations of one image taking
turns in a rotating order (interleaved, so a slow spell of this shared
machine falls on all of them). For each configuration:

- time per image (text encoding, the denoise loop, the VAE decode), its median,
  and the median over images of its ratio to the uncached image's time in the
  same round: the number to read;
- full UNet calls per image, counted on the UNet's mid block (the deep path);
- PSNR and SSIM of each image against the uncached image of the same prompt and
  seed (the cache's only error: interval 1 is bit-identical to no caching);
- prompt adherence on the trained fixture (fixtures/trained/shapes-sd): the
  share of held-out shape/colour/background captions whose image matches, the
  metric of tests/integration/quality (stageflow.inference.training.analysis).

Defaults: the trained fixture at the quality gate's settings (32 px, 20
steps, guidance 7.5, the 12 held-out combinations x seeds 0..2). Another
`--folder` (a random-weight real-scale one) has no adherence to read: its
table leaves that column out and its section is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
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

SECTION = "bench/stepcache.py"
TRAINED = ROOT / "fixtures" / "trained" / "shapes-sd"
# tests/integration/quality/shared.py: the adherence gate's settings.
SIDE, STEPS, GUIDANCE, SEEDS = 32, 20, 7.5, (0, 1, 2)


@dataclass(frozen=True)
class Config:
    interval: int
    depth: int

    @property
    def label(self) -> str:
        return "off (interval 1)" if self.interval == 1 else f"{self.interval}, depth {self.depth}"


@dataclass
class Samples:
    ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    full_calls: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    adherent: list[bool] = field(default_factory=list)


def configs(intervals: Sequence[int], depths: Sequence[int]) -> list[Config]:
    """Interval 1 (no caching) once, then every interval above 1 at every depth."""
    out = [Config(1, 0)] if 1 in intervals else []
    if not out:
        raise SystemExit("--intervals must include 1: the uncached image is the reference")
    return out + [Config(k, d) for k in intervals if k > 1 for d in depths]


def quality(image: Any, reference: Any) -> tuple[float, float]:
    """(PSNR dB, SSIM) of `image` against `reference`, RGB PIL images."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = np.asarray(image), np.asarray(reference)
    if np.array_equal(a, b):
        return math.inf, 1.0
    psnr = peak_signal_noise_ratio(b, a, data_range=255)
    ssim = structural_similarity(b, a, channel_axis=2, data_range=255)
    return float(psnr), float(ssim)


@contextlib.contextmanager
def depth_of(model: Any, depth: int) -> Iterator[None]:
    """The model's parts with their step cache at `depth` for a while (the
    stage's own depth is the default, DeepCache's shallowest branch)."""
    parts = model.parts
    assert parts.step_cache is not None, "step caching needs the torch backend"
    model._parts = dataclasses.replace(
        parts, step_cache=dataclasses.replace(parts.step_cache, depth=depth)
    )
    try:
        yield
    finally:
        model._parts = parts


class MidBlockCounter:
    """Counts the UNet's mid-block calls: one per full (deep-path) UNet call."""

    def __init__(self, unet: Any) -> None:
        self.calls = 0
        self._handle = unet.mid_block.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def workload(trained: bool, images: int | None) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the held-out captions x seeds, `images` of them."""
    from stageflow.inference.training import data

    captions = [data.caption(*combo) for combo in data.HELD_OUT]
    pairs = [(c, s) for c in captions for s in SEEDS]
    if not trained:
        pairs = [(c, s) for s in SEEDS for c in captions]  # seeds vary first
    return pairs[:images] if images else pairs


def measure(
    model: Any,
    cfgs: Sequence[Config],
    pairs: Sequence[tuple[str, int]],
    args: argparse.Namespace,
    log: Any,
) -> dict[Config, Samples]:
    from stageflow.inference.interface import StageInputs, Txt2ImgParams
    from stageflow.inference.training import analysis

    def render(cfg: Config, prompt: str, seed: int) -> tuple[Any, float]:
        params = Txt2ImgParams(
            prompt=prompt,
            width=args.side,
            height=args.side,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=seed,
            cache_interval=cfg.interval,
        )
        with depth_of(model, cfg.depth):
            started = time.perf_counter()
            image = model.run(params, StageInputs(), lambda i, n: None, lambda: False)
            return image, (time.perf_counter() - started) * 1000

    # Warm-up, both code paths (the plain UNet call, the cached predictor): the
    # first calls at a shape pay lazy inits (torch faults its weights' pages in).
    for cfg in cfgs[:2]:
        render(cfg, pairs[0][0], 10_000)
    counter = MidBlockCounter(model.parts.step_cache.unet)
    results = {cfg: Samples() for cfg in cfgs}
    try:
        for n, (prompt, seed) in enumerate(pairs):
            shift = n % len(cfgs)
            order = [*cfgs[shift:], *cfgs[:shift]]
            images, times = {}, {}
            for cfg in order:
                before = counter.calls
                images[cfg], times[cfg] = render(cfg, prompt, seed)
                results[cfg].full_calls.append(counter.calls - before)
            base = cfgs[0]
            for cfg in cfgs:
                res = results[cfg]
                res.ms.append(times[cfg])
                res.ratios.append(ratio(times[cfg], times[base]))
                psnr, ssim = quality(images[cfg], images[base])
                res.psnr.append(psnr)
                res.ssim.append(ssim)
                if args.adherence:
                    res.adherent.append(analysis.score(images[cfg], prompt))
            log(
                f"image {n + 1}/{len(pairs)} ({prompt!r}, seed {seed}): "
                + ", ".join(f"{c.interval}/{c.depth} {times[c]:.0f} ms" for c in cfgs)
            )
    finally:
        counter.close()
    return results


def fmt_db(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values) and not finite:
        return "identical"
    return f"{median(finite):.1f} (min {min(finite):.1f})"


def report_body(
    results: dict[Config, Samples],
    *,
    folder: Path,
    argv: Sequence[str],
    args: argparse.Namespace,
    pairs: int,
    levels: int,
    started: str,
    elapsed_s: float,
    load: tuple[float, float],
) -> str:
    cfgs = list(results)
    base = results[cfgs[0]]
    try:
        shown = folder.relative_to(ROOT)
    except ValueError:
        shown = folder
    lines = [
        "# Step caching (DeepCache): UNet evaluations against image quality",
        "",
        f"- date: {started}",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/stepcache.py {' '.join(argv)}`".rstrip()
        + ("" if argv else " (`make bench-stepcache`)"),
        f"- setup: `Txt2ImgModel.run` in-process on {shown} (torch, fp32), {args.threads} "
        f"torch thread(s), {args.side} px, {args.steps} steps, guidance {args.guidance:g}; "
        f"{pairs} images per configuration (prompt x seed), the configurations of each image "
        f"interleaved in a rotating order after a warm-up image uncached and cached; "
        f"{elapsed_s:.0f} s in all",
        f"- load average {load[0]:.2f} when it started, {load[1]:.2f} when it ended",
        "",
        "**interval** N: a full UNet call every N steps (the stage's `cache_interval`); "
        "**depth** d: the steps between rerun conv_in, down_blocks[0..d], the up blocks from "
        "the matching depth and conv_out over the deep features cached at the last full step "
        "(the stage serves depth 0, the shallowest branch). Time is per image (text encoding, "
        "the loop, the VAE decode); the ratio is the median over images of each image's time "
        "over the uncached one's in the same round. PSNR/SSIM: against the uncached image of "
        "the same prompt and seed (median, and the worst image). This UNet has "
        f"{levels} levels: depth {levels - 1} skips only its mid block.",
        "",
    ]
    header = ["interval, depth", "ms / image", "× uncached", "full UNet calls", "PSNR dB", "SSIM"]
    if args.adherence:
        header.append("adherence")
    rows = []
    for cfg in cfgs:
        res = results[cfg]
        row = [
            cfg.label,
            fmt_ms(median(res.ms)),
            fmt_ratio(median(res.ratios)) if cfg != cfgs[0] else "1.00×",
            f"{median(res.full_calls):g} of {args.steps}",
            fmt_db(res.psnr),
            f"{median(res.ssim):.3f} (min {min(res.ssim):.3f})",
        ]
        if args.adherence:
            row.append(f"{sum(res.adherent)}/{len(res.adherent)}")
        rows.append(row)
    lines += table(header, rows)
    if args.adherence:
        lines += [
            "",
            "Adherence: images whose shape, colour and background match their held-out caption "
            "(stageflow.inference.training.analysis.score, the quality gate's metric; the gate "
            f"is 95%). The uncached run scores {sum(base.adherent)}/{len(base.adherent)}.",
        ]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--folder", type=Path, default=TRAINED, help="a diffusers SD folder")
    parser.add_argument("--side", type=int, default=SIDE)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--intervals", default="1,2,3,5")
    parser.add_argument(
        "--depths",
        default=None,
        help="comma-separated, or all (of the UNet's); default all on the fixture, 0 otherwise",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="images per configuration (default: all 36 held-out on the fixture, 2 otherwise)",
    )
    args = parser.parse_args(argv)
    args.folder = args.folder.resolve()
    args.trained = args.folder == TRAINED.resolve()
    args.adherence = args.trained
    if args.images is None and not args.trained:
        args.images = 2
    if args.depths is None:
        # At real scale every configuration costs minutes: the depth the stage serves.
        args.depths = "all" if args.trained else "0"
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if not (args.folder / "unet").is_dir():
        sys.exit(f"{args.folder}: not a diffusers folder (no unet/)")
    started, t0, load_start = utc_now(), time.perf_counter(), os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {message}", flush=True)

    import torch

    from stageflow.inference.registry import create_model

    torch.set_num_threads(args.threads)
    model: Any = create_model("sd-txt2img", args.folder, torch_threads=args.threads)
    log(f"loading {args.folder}")
    model.load()
    try:
        levels = model.parts.step_cache.levels
        depths = (
            list(range(levels))
            if args.depths == "all"
            else [int(d) for d in args.depths.split(",")]
        )
        cfgs = configs([int(k) for k in args.intervals.split(",")], depths)
        pairs = workload(args.trained, args.images)
        results = measure(model, cfgs, pairs, args, log)
    finally:
        model.unload()
    body = report_body(
        results,
        folder=args.folder,
        argv=argv,
        args=args,
        pairs=len(pairs),
        levels=levels,
        started=started,
        elapsed_s=time.perf_counter() - t0,
        load=(load_start, os.getloadavg()[0]),
    )
    section = SECTION if args.trained else f"{SECTION} {args.folder.name}"
    write_section(args.out, section, body)
    log(f"wrote the {section} section of {args.out}")


if __name__ == "__main__":
    main()
