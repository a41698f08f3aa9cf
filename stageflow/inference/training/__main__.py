"""`python -m stageflow.inference.training --out fixtures/trained`: retrain every fixture.

Bit-reproducible on one torch thread: the same seeds, library versions and
CPU give byte-identical weights, so MANIFEST.json's digests are a check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from stageflow.inference.training import data
from stageflow.inference.training.train_sd import SdTrainSettings, train_sd
from stageflow.inference.training.train_upscaler import UpscalerTrainSettings, train_upscaler

SD_FOLDER = "shapes-sd"
ESRGAN_FOLDER = "shapes-esrgan-x4"
MANIFEST = "MANIFEST.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("fixtures/trained"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a few hundred steps: checks the recipe end to end"
    )
    args = parser.parse_args(argv)
    # One thread: the only way to bit-identical weights from run to run.
    torch.set_num_threads(1)
    sd = SdTrainSettings(seed=args.seed)
    up = UpscalerTrainSettings(seed=args.seed)
    if args.quick:
        sd = SdTrainSettings(seed=args.seed, vae_steps=200, diffusion_steps=300, dataset_size=2048)
        up = UpscalerTrainSettings(seed=args.seed, steps=100)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out, prefix=".train-") as scratch:
        sd_info = train_sd(Path(scratch) / SD_FOLDER, sd, log)
        up_info = train_upscaler(Path(scratch) / ESRGAN_FOLDER, up, log)
        for name in (SD_FOLDER, ESRGAN_FOLDER):
            if (out / name).exists():
                shutil.rmtree(out / name)
            (Path(scratch) / name).rename(out / name)
        (out / SD_FOLDER / "model.yaml").write_text(data.prompt_domain_yaml(), encoding="utf-8")
    manifest: dict[str, Any] = {
        "command": "make fixtures-train",
        "torch_threads": 1,
        "versions": _versions(),
        "data": {
            "image_size": 32,
            "shapes": list(data.SHAPES),
            "palette": data.PALETTE,
            "held_out": [list(c) for c in data.HELD_OUT],
        },
        SD_FOLDER: sd_info,
        ESRGAN_FOLDER: up_info,
        "files": _digests(out, (SD_FOLDER, ESRGAN_FOLDER)),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log(f"done in {time.monotonic() - started:.0f} s; wrote {out}")
    return 0


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _digests(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    files = sorted(p for name in folders for p in (root / name).rglob("*") if p.is_file())
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


if __name__ == "__main__":
    sys.exit(main())
