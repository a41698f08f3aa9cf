"""One upscale in a fresh process, reporting its memory: run by bench/serving.py.

    .venv/bin/python bench/upscale_memory.py --model-path models/tiny-esrgan-x4 \
        --side 1024 --tile-size 128 --threads 2

Prints one JSON line: the RSS once the model is loaded and the input image
made (`baseline_kb`, VmRSS from /proc/self/status), the peak RSS of the upscale
(`peak_kb`), the process's whole-life peak (`ru_maxrss_kb`, resource.getrusage;
Linux reports KiB) and the upscale's own time. Loading the model peaks above
where its RSS settles, so the high-water mark is reset once loaded (writing 5
to /proc/self/clear_refs; `peak_reset` says whether it took) and `peak_kb` is
VmHWM read after the upscale. ru_maxrss cannot be reset that way: the kernel
also folds the mark into it whenever a thread exits, so it may still hold the
load's peak. A process per mode all the same: a clean heap for each.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def status_kb(field: str) -> int:
    """A size from /proc/self/status (VmRSS: resident now, VmHWM: its peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kb("VmHWM") <= status_kb("VmRSS") + 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=128, help="0: the whole image at once")
    parser.add_argument("--tile-overlap", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from stageflow.inference.interface import StageInputs, UpscaleParams
    from stageflow.inference.registry import create_model

    torch.set_num_threads(args.threads)
    model = create_model(
        "esrgan", args.model_path, torch_threads=args.threads, max_side=max(1024, args.side)
    )
    model.load()
    box = (-2.0, -1.2, 0.8, 1.2)
    image = Image.effect_mandelbrot((args.side, args.side), box, 64).convert("RGB")
    reset = reset_peak()
    baseline = status_kb("VmRSS")
    params = UpscaleParams(tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    started = time.perf_counter()
    out = model.run(params, StageInputs(image=image), lambda i, n: None, lambda: False)
    seconds = time.perf_counter() - started
    peak = status_kb("VmHWM")
    whole_life = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {
        "tile_size": args.tile_size,
        "side": args.side,
        "out_side": out.width,
        "baseline_kb": baseline,
        "peak_kb": peak,
        "ru_maxrss_kb": whole_life,
        "peak_reset": reset,
        "seconds": seconds,
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
