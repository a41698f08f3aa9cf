"""bf16 against fp32, image by image: PSNR and SSIM -> a section of docs/quality.md.

    .venv/bin/python bench/dtype_quality.py [--threads 1] [--out docs/quality.md]

What `dtype=auto` gives up on a CPU with native bf16. Each model is loaded
twice, in fp32 (the default, bit-identical to diffusers) and in bf16 (the
torch backend casts the UNet, text encoders and VAE; latents, noise and the
scheduler stay fp32), and both make the same images: same prompt, seed, size,
steps and guidance. Each bf16 image is scored against its fp32 twin: PSNR
(dB, 8-bit levels) and SSIM (scikit-image, RGB, data range 255), and the
largest level difference. The trained fixture (fixtures/trained/shapes-sd)
makes the quality gates' held-out images (12 captions x 3 seeds, 32 px, 20
steps, guidance 7.5), and the shape classifier reads both twins, so the table
says whether bf16 ever changes what is drawn; the random-weight fixtures
(models/tiny-sd, models/tiny-sdxl, `make fixtures`) add an SD and an SDXL
graph at 64 px. The two precisions alternate image by image, so the time
ratio bf16/fp32 is of the same minutes; it is this CPU's, not a promise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# The weights of bench/realscale.py's SD 1.5-size folder (UNet, VAE, text encoder).
SD15_WEIGHT_BYTES = 4_265_073_812
sys.path.insert(0, str(ROOT))

from bench.report import fmt_ratio, machine, ratio, table, write_section  # noqa: E402
from stageflow.cli.cluster import TRAINED_MODELS_DIR, TRAINED_STAGE_MODELS  # noqa: E402
from stageflow.inference import hardware  # noqa: E402
from stageflow.inference.diffusion import Txt2ImgModel  # noqa: E402
from stageflow.inference.interface import StageInputs, Txt2ImgParams  # noqa: E402
from stageflow.inference.training import analysis, data  # noqa: E402

SECTION = "bench/dtype_quality.py"
SEEDS = (0, 1, 2)
STEPS = 20
GUIDANCE = 7.5
# Prompts for the random-weight fixtures (they draw noise-like images whatever the words).
FREE_PROMPTS = ("a red circle on a blue background", "epic game hero portrait")


@dataclass(frozen=True)
class Subject:
    """One model folder and the images it makes."""

    label: str
    folder: Path
    side: int
    prompts: tuple[str, ...]
    # Whether the shape classifier can read its images (the trained fixture).
    trained: bool


@dataclass(frozen=True)
class Twin:
    """One image in both precisions, scored."""

    prompt: str
    seed: int
    psnr: float
    ssim: float
    max_levels: int
    fp32_s: float
    bf16_s: float
    # The classifier's reading of each twin, and whether each matches the caption.
    read_fp32: str = ""
    read_bf16: str = ""
    ok_fp32: bool = False
    ok_bf16: bool = False


def subjects(models: Path) -> list[Subject]:
    captions = tuple(data.caption(*combo) for combo in data.HELD_OUT)
    trained = TRAINED_MODELS_DIR / TRAINED_STAGE_MODELS["base"]
    found = [Subject(f"{trained.name} (trained)", trained, 32, captions, True)]
    for name in ("tiny-sd", "tiny-sdxl"):
        folder = models / name
        if folder.is_dir():
            found.append(Subject(f"{name} (random weights)", folder, 64, FREE_PROMPTS, False))
        else:
            print(f"skipping {folder}: missing (`make fixtures` builds it)", flush=True)
    return found


def load(folder: Path, dtype: str, threads: int) -> Txt2ImgModel:
    model = Txt2ImgModel(folder, dtype=dtype, torch_threads=threads)
    model.load()
    return model


def generate(model: Txt2ImgModel, prompt: str, seed: int, side: int) -> tuple[np.ndarray, float]:
    params = Txt2ImgParams(
        prompt=prompt, width=side, height=side, steps=STEPS, guidance_scale=GUIDANCE, seed=seed
    )
    start = time.perf_counter()
    image = model.run(params, StageInputs(), lambda _i, _n: None, lambda: False)
    return np.asarray(image.convert("RGB")), time.perf_counter() - start


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(PSNR dB, SSIM, max level difference) of `b` against `a`."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    psnr = float("inf") if diff == 0 else float(peak_signal_noise_ratio(a, b, data_range=255))
    ssim = float(structural_similarity(a, b, channel_axis=2, data_range=255))
    return psnr, ssim, diff


def twins(subject: Subject, threads: int) -> list[Twin]:
    fp32, bf16 = load(subject.folder, "fp32", threads), load(subject.folder, "bf16", threads)
    assert bf16.parts.weights_dtype == "bf16"
    found = []
    try:
        for prompt in subject.prompts:
            for seed in SEEDS:
                a, fp32_s = generate(fp32, prompt, seed, subject.side)
                b, bf16_s = generate(bf16, prompt, seed, subject.side)
                twin = Twin(prompt, seed, *compare(a, b), fp32_s, bf16_s)
                if subject.trained:
                    twin = _read(twin, a, b)
                found.append(twin)
                print(
                    f"{subject.label} {prompt!r} seed {seed}: PSNR {twin.psnr:.2f} dB, "
                    f"SSIM {twin.ssim:.4f}, max {twin.max_levels}",
                    flush=True,
                )
    finally:
        fp32.unload()
        bf16.unload()
    return found


def _read(twin: Twin, a: np.ndarray, b: np.ndarray) -> Twin:
    """The twin with the shape classifier's reading of both images."""
    fp32, bf16 = Image.fromarray(a), Image.fromarray(b)
    return replace(
        twin,
        read_fp32=_words(analysis.read(fp32)),
        read_bf16=_words(analysis.read(bf16)),
        ok_fp32=analysis.score(fp32, twin.prompt),
        ok_bf16=analysis.score(bf16, twin.prompt),
    )


def _words(reading: analysis.Reading) -> str:
    return f"{reading.colour} {reading.shape} on {reading.background}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (pinned).")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "quality.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {s.label: (s, twins(s, args.threads)) for s in subjects(args.models)}
    write_section(args.out, SECTION, report(results, args))
    print(f"wrote {args.out} ({SECTION})")


def _db(value: float) -> str:
    return "identical" if np.isinf(value) else f"{value:.2f}"


def summary_row(label: str, found: list[Twin]) -> list[str]:
    psnrs = [t.psnr for t in found]
    ssims = [t.ssim for t in found]
    time_ratio = ratio(
        statistics.median(t.bf16_s for t in found), statistics.median(t.fp32_s for t in found)
    )
    return [
        label,
        str(len(found)),
        _db(min(psnrs)),
        _db(statistics.median(psnrs)),
        f"{min(ssims):.4f}",
        f"{statistics.median(ssims):.4f}",
        str(max(t.max_levels for t in found)),
        fmt_ratio(time_ratio),
    ]


def adherence_line(found: list[Twin]) -> str:
    n = len(found)
    fp32, bf16 = sum(t.ok_fp32 for t in found), sum(t.ok_bf16 for t in found)
    same = sum(t.read_fp32 == t.read_bf16 for t in found)
    return (
        f"Shape classifier on the trained fixture's {n} held-out images: fp32 {fp32}/{n} "
        f"match their caption, bf16 {bf16}/{n}; the two readings agree on {same}/{n}."
    )


def report(results: dict[str, tuple[Subject, list[Twin]]], args: argparse.Namespace) -> str:
    cpu = hardware.detect()
    from stageflow.inference.base import weight_bytes

    trained_folder = TRAINED_MODELS_DIR / TRAINED_STAGE_MODELS["base"]
    auto_small = hardware.choose_cast_dtype("auto", cpu, weight_bytes=weight_bytes(trained_folder))
    auto_big = hardware.choose_cast_dtype("auto", cpu, weight_bytes=SD15_WEIGHT_BYTES)
    header = [
        "model",
        "images",
        "min PSNR (dB)",
        "median PSNR (dB)",
        "min SSIM",
        "median SSIM",
        "max level diff",
        "time bf16/fp32",
    ]
    rows = [summary_row(label, found) for label, (_s, found) in results.items()]
    trained = [found for s, found in results.values() if s.trained]
    per_image = [
        [
            f"{t.prompt}, seed {t.seed}",
            _db(t.psnr),
            f"{t.ssim:.4f}",
            str(t.max_levels),
            t.read_bf16 if t.read_bf16 == t.read_fp32 else f"{t.read_fp32} -> {t.read_bf16}",
        ]
        for found in trained
        for t in found
    ]
    command = ".venv/bin/python bench/dtype_quality.py"
    if args.threads != 1:
        command += f" --threads {args.threads}"
    sides = ", ".join(f"{label} {s.side} px" for label, (s, _f) in results.items())
    lines = [
        "## bf16 against fp32",
        "",
        f"Produced by `make dtype-quality` (`{command}`).",
        "",
        "What `dtype=auto` trades on a CPU with native bf16: each model loaded in fp32 "
        "(the default, bit-identical to diffusers) and in bf16 (UNet, text encoders and "
        "VAE cast at load; latents, noise and scheduler fp32) makes the same images "
        f"(seeds {', '.join(map(str, SEEDS))}, {STEPS} steps, guidance {GUIDANCE}; {sides}), "
        "and each bf16 image is scored against its fp32 twin: PSNR (8-bit levels), SSIM "
        "(scikit-image, RGB, data range 255), the largest level difference. The trained "
        "fixture's prompts are the quality gates' 12 held-out captions; the random-weight "
        f"fixtures' are {', '.join(repr(p) for p in FREE_PROMPTS)}. The time ratio is the "
        "median per image, the two precisions alternating image by image.",
        "",
        *table(header, rows),
        "",
        *([adherence_line(trained[0]), ""] if trained else []),
        f"On this host `dtype=auto` resolves to **{auto_small.dtype}** for the trained "
        f"fixture ({auto_small.reason}) and to **{auto_big.dtype}** for an SD 1.5-size "
        f"folder ({auto_big.reason}).",
        "",
        "Reading it: bf16 keeps 8 of float32's 24 mantissa bits, so every call of a part "
        "rounds; over 20 steps the rounding moves most pixels by a level or two and a few "
        "edge pixels by more (the max column), far below what changes the drawing (the "
        "classifier row). The golden-image gate holds bf16 to its own bound, set from its "
        "one golden seed (tests/integration/quality/shared.py: at most 12 levels, 0.7 on "
        "average, against fp32's 2 and 0.1); other seeds reach further (the max column), "
        "so that bound is the golden seed's, not every image's. The adherence gate is the "
        "same 0.95 for both. The time ratio is of graphs far too small for bf16 to pay "
        "(casts and per-call overhead dominate); the per-step cost at 512 px is "
        "`bench/realscale.py`'s steps-bf16 phase (docs/benchmarks.md), and the real-scale "
        "image PSNR its quality-bf16 phase (`.venv/bin/python bench/realscale.py "
        "quality-bf16`).",
        "",
        "<details><summary>Per image: the trained fixture</summary>",
        "",
        *table(["prompt, seed", "PSNR (dB)", "SSIM", "max level diff", "classifier"], per_image),
        "",
        "</details>",
        "",
        f"- {machine()}; {cpu.words()}; torch {metadata.version('torch')}, threads "
        f"{args.threads}; scikit-image {metadata.version('scikit-image')}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
