"""The costs of real scale, on a random-weight SD 1.5-size folder: docs/benchmarks.md.

    .venv/bin/python bench/realscale.py [PHASE ...] [--threads 2] [--out docs/benchmarks.md]

`make bench-realscale` runs every phase; this takes an hour or more on a 2-core
CPU and needs ~12 GB of free memory (ONNX Runtime at 512 px) and ~16 GB of disk
under var/realscale/ (git-ignored; no weights are ever committed). Phases, in
order (name some to run only those; the report is written from every result
recorded so far, and says which were not measured):

  build         the folder: standard SD 1.5 configs (UNet 859.5 M, VAE 83.7 M,
                CLIP-L text encoder 123.1 M), seeded random weights, the real
                49,408-token CLIP BPE vocabulary from the open-clip-torch wheel
                (`pip download --no-deps`, cached under var/realscale/wheels)
  machine       CPU model and the vector features the kernels use
  matmul        this machine's fp32 (and bf16) matmul peak, 4096^2, same threads
  load-parts    where a torch start's seconds go, in one process: imports, hashing
                every file vs the digest cache, reading the weights
  sessions      ONNX Runtime session creation, plain graph (optimised at load) vs
                the compile-time optimised one (optimisation off), on the
                real-size VAE decoder and text encoder (minutes, not the UNet's
                4 min export)
  cold-torch    base stage process to SERVING, torch: digest cache empty / warm
  cold-compile  the same with compile=inductor and warm-up (the compile in the
                start), inductor's cache empty then warm, beside warm-up alone
  steps-torch   UNet step at 512 px with guidance (batch 2): per step, FLOPs, RSS
  steps-bf16    the same with dtype bf16
  parts-dtype   each part (text encoder, UNet step, VAE decode and encode at
                512 px) in fp32 and in bf16, alternated in one process
  parity        the base stage's run vs diffusers' StableDiffusionPipeline in one
                process: per step, and whether the images are bit-identical
  quality-bf16  the same images (4 steps, 512 px) from the stage model in fp32 and
                in bf16: bf16's PSNR, SSIM and largest level difference from fp32
  vae           VAE decode (the real-size VAE alone) at 512/1024/2048 px, whole and
                tiled: peak RSS, time, the estimate that picks tiling
  export        `export_onnx` with the compile-time optimised graphs
  cold-onnx     base stage process to SERVING, onnxruntime: plain graphs vs the
                saved optimised ones, digest cache warm; with and without warm-up
  steps-onnx    UNet steps at 512 px with guidance: first steps and steady ones,
                with and without warm-up; peak RSS against torch's
  ort-memory    the UNet's ONNX Runtime session alone under each memory setting
                (arena, memory patterns, weight prepacking): RSS after creation,
                peak over two guided steps at 512 px, step times

Every measurement that is a process's cost (RSS, cold start) runs in a process
of its own; results accumulate in bench/results/realscale.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import fmt_ratio, machine, table, utc_now, verdict, write_section  # noqa: E402

SECTION = "bench/realscale.py"
WORK = ROOT / "var" / "realscale"
FOLDER = WORK / "sd15-random"
EXPORT = WORK / "sd15-random-onnx"
# The folder again (hard links: no second copy of its files) with its weights also
# stored in bf16 beside them (`stageflow models variant`).
VARIANT = WORK / "sd15-random-bf16"
# The measurements the report is made from, committed beside the script: a new
# checkout that runs one phase again keeps every other phase's figures (var/ is not).
RESULTS = ROOT / "bench" / "results" / "realscale.json"
OPEN_CLIP = "open-clip-torch==3.3.0"
VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
SIDE = 512
PHASES = (
    "build",
    "machine",
    "matmul",
    "load-parts",
    "sessions",
    "cold-torch",
    "cold-compile",
    "steps-torch",
    "steps-bf16",
    "parts-dtype",
    "parity",
    "quality-bf16",
    "vae",
    "export",
    "cold-onnx",
    "steps-onnx",
    "ort-memory",
)

UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


# --- results -------------------------------------------------------------------------


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def record(phase: str, value: Any) -> None:
    results = load_results()
    # The 1-minute load average as the phase ended: on a shared machine it says
    # how far to trust the seconds (2 cores: above 2, others were computing too).
    load = round(os.getloadavg()[0], 1)
    results[phase] = {"at": f"{utc_now()}, load average {load}", **value}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_child(phase: str, *args: str, threads: int) -> dict[str, Any]:
    """Run `_child PHASE ARGS` in a fresh process; its last stdout line is its JSON."""
    cmd = [sys.executable, __file__, "_child", phase, *args, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    value: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return value


# --- build ---------------------------------------------------------------------------


def clip_vocab() -> Path:
    """The real CLIP BPE merges, from the open-clip-torch wheel (fetched once)."""
    wheels = WORK / "wheels"
    target = WORK / "bpe_simple_vocab_16e6.txt.gz"
    if target.is_file():
        return target
    found = sorted(wheels.glob("open_clip_torch-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", OPEN_CLIP, "-d", str(wheels)],
            check=True,
        )
        found = sorted(wheels.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(found[-1]) as wheel:
        target.write_bytes(wheel.read(VOCAB_MEMBER))
    return target


def write_clip_tokenizer(folder: Path, vocab_gz: Path) -> int:
    """CLIP's own vocabulary (its merges, as open_clip's SimpleTokenizer reads
    them) as a transformers CLIPTokenizer folder; returns its size (49,408)."""
    from stageflow.inference.tokenizer import write_tokenizer_files

    lines = gzip.decompress(vocab_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [line.split() for line in lines[1 : 49152 - 256 - 2 + 1]]
    return write_tokenizer_files(folder, [(a, b) for a, b in merges])


def build(threads: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stageflow.inference.fixtures import SCHEDULER_CONFIG, write_model_index

    if (FOLDER / "model_index.json").is_file():
        return load_results().get("build", {"folder": str(FOLDER)})
    torch.set_num_threads(threads)
    started = time.perf_counter()
    scratch = FOLDER.with_name(FOLDER.name + ".partial")
    vocab_size = write_clip_tokenizer(scratch / "tokenizer", clip_vocab())
    params = {}
    torch.manual_seed(0)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    params["text_encoder"] = sum(p.numel() for p in text.parameters())
    text.save_pretrained(scratch / "text_encoder")
    del text
    for name, cls, config in (("unet", UNet2DConditionModel, UNET), ("vae", AutoencoderKL, VAE)):
        torch.manual_seed(0)
        model: Any = cls(**config)
        params[name] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(scratch / name)
        del model
    scheduler: Any = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(scratch / "scheduler")
    write_model_index(scratch)
    scratch.rename(FOLDER)
    size = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    return {
        "folder": str(FOLDER),
        "params_m": {k: round(v / 1e6, 1) for k, v in params.items()},
        "vocab": vocab_size,
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 1),
    }


# --- machine and matmul peak ----------------------------------------------------------


def machine_info(threads: int) -> dict[str, Any]:
    from stageflow.inference.onnx.runtime import optimized_signature

    return {"line": machine(), "cpu_features": optimized_signature()["cpu_features"]}


def matmul_peak(threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    n = 4096
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(dtype)
        b = torch.randn(n, n, generator=torch.Generator().manual_seed(1)).to(dtype)
        torch.mm(a, b)
        best = min(_timed(partial(torch.mm, a, b)) for _ in range(5))
        out[f"{name}_gflops"] = round(2 * n**3 / best / 1e9, 1)
    return {"threads": threads, **out}


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load_parts(threads: int) -> dict[str, Any]:
    """A torch start's parts, timed in this (fresh) process."""
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from stageflow.inference.base import folder_fingerprint
    from stageflow.inference.digests import DigestCache
    from stageflow.inference.sd_parts import load_torch_parts

    imports = time.perf_counter() - started
    torch.set_num_threads(threads)
    warm_page_cache(FOLDER)
    hash_all = _timed(lambda: folder_fingerprint(FOLDER))
    with tempfile.TemporaryDirectory(prefix="digests-") as tmp:
        folder_fingerprint(FOLDER, DigestCache(Path(tmp)))
        cache = DigestCache(Path(tmp))
        cached = _timed(lambda: folder_fingerprint(FOLDER, cache))
        assert cache.hashed == 0
    weights = _timed(lambda: load_torch_parts(FOLDER))
    return {
        "threads": threads,
        "imports_s": round(imports, 2),
        "hash_all_s": round(hash_all, 2),
        "hash_cached_s": round(cached, 4),
        "load_weights_s": round(weights, 2),
    }


def sessions(threads: int, repeats: int = 3) -> dict[str, Any]:
    """Session creation of two real-size graphs, plain vs compile-time optimised."""
    import torch
    from transformers import CLIPTextModel

    from stageflow.inference.onnx import export as onnx_export
    from stageflow.inference.onnx import runtime

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="sessions-", dir=WORK) as tmp:
        folder = Path(tmp)
        from diffusers import AutoencoderKL

        vae: Any = AutoencoderKL.from_pretrained(FOLDER / "vae", low_cpu_mem_usage=False).eval()
        onnx_export._export(
            onnx_export._VaeDecoder(vae),
            (torch.randn(1, 4, 16, 16),),
            folder,
            "vae_decoder",
            17,
            inputs={"latents": {0: "b", 2: "h", 3: "w"}},
            outputs={"image": {0: "b", 2: "H", 3: "W"}},
        )
        text: Any = CLIPTextModel.from_pretrained(FOLDER / "text_encoder").eval()
        onnx_export._export(
            onnx_export._TextEncoder(text),
            (torch.zeros(1, 77, dtype=torch.int64),),
            folder,
            "text_encoder",
            17,
            inputs={"input_ids": {0: "b"}},
            outputs={"hidden": {0: "b"}},
        )
        onnx_export.save_optimized(folder)
        providers = runtime.resolve_providers([])
        for part in ("vae_decoder", "text_encoder"):
            plain, optimized = [], []
            for _ in range(repeats):
                plain_graph = partial(
                    runtime.create_session, folder / f"{part}.onnx", providers, threads
                )
                plain.append(_timed(plain_graph))
                saved_graph = partial(
                    runtime.create_session,
                    folder / f"{part}.opt.onnx",
                    providers,
                    threads,
                    optimized=True,
                )
                optimized.append(_timed(saved_graph))
            out[part] = {
                "plain_s": round(min(plain), 2),
                "optimized_s": round(min(optimized), 2),
            }
    return out


# --- cold start ---------------------------------------------------------------------


def warm_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass


def serve_once(
    folder: Path, backend: str, threads: int, *extra: str, env_extra: dict[str, str] | None = None
) -> dict[str, float]:
    """One base stage process: seconds to SERVING, and its peak RSS there."""
    from stageflow.serving.processes import ServerProcess, log_tail

    with tempfile.TemporaryDirectory(prefix="realscale-") as tmp:
        scratch = Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "stageflow.services.base",
            "--model-path",
            str(folder),
            "--backend",
            backend,
            "--port",
            "0",
            "--port-file",
            str(scratch / "port"),
            "--torch-threads",
            str(threads),
            "--store-url",
            str(scratch / "store"),
            *extra,
        ]
        log = scratch / "stage.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
        server = ServerProcess(
            backend, cmd, log=log, port_file=scratch / "port", env=env, cwd=ROOT, start_timeout=600
        )
        started = time.perf_counter()
        server.start()
        try:
            server.wait_port(poll_s=0.05)
            server.wait_ready(poll_s=0.05)
            serving = time.perf_counter() - started
            rss = _rss_of(server.pid)
        except BaseException:
            server.stop(grace=0)
            print(log_tail(log), file=sys.stderr)
            raise
        server.stop(grace=30)
    return {"serving_s": round(serving, 2), "rss_mb": rss}


def _rss_of(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return float("nan")


# What any torch start of the folder pays, stageflow or not: a fresh interpreter
# importing torch, diffusers and transformers and loading the four parts with
# from_pretrained, as load_sd_parts does (fp32, the folder's own dtype).
LOAD_FLOOR = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
imported = time.perf_counter()
folder = Path(sys.argv[1])
CLIPTokenizer.from_pretrained(folder / "tokenizer")
CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False).eval()
loaded = time.perf_counter()
print(json.dumps({"imports_s": imported - started, "load_s": loaded - imported}), flush=True)
"""


def load_floor(folder: Path, threads: int) -> dict[str, float]:
    """Seconds from a fresh process to the folder's parts loaded by the libraries
    alone (the floor under a torch stage's start), and how they split."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD_FLOOR, str(folder), str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ready = time.perf_counter() - started
    if proc.wait() != 0 or not line:
        raise RuntimeError(f"the load-floor process failed (exit {proc.returncode})")
    split = json.loads(line)
    return {
        "ready_s": round(ready, 2),
        "imports_s": round(split["imports_s"], 2),
        "load_s": round(split["load_s"], 2),
    }


def build_variant() -> Path:
    """VARIANT, made once: a hard-linked copy of FOLDER, then its bf16 variant."""
    if (VARIANT / "unet" / "diffusion_pytorch_model.bf16.safetensors").is_file():
        return VARIANT
    subprocess.run(["rm", "-rf", str(VARIANT)], check=True)
    subprocess.run(["cp", "-al", str(FOLDER), str(VARIANT)], check=True)
    cli = [sys.executable, "-m", "stageflow.cli", "models", "variant", str(VARIANT)]
    subprocess.run([*cli, "--dtype", "bf16"], check=True, cwd=ROOT)
    return VARIANT


def cold_torch(threads: int, repeats: int = 3) -> dict[str, Any]:
    """The folder served in its files' own fp32 (nothing to cast), and with the
    stage's default dtype=auto (bf16 on a CPU with native bf16: a cast at load);
    each warm start beside a start of the libraries alone (the floor), so that
    stageflow's own share of the start is a difference within one run."""
    warm_page_cache(FOLDER)
    out: dict[str, Any] = {"threads": threads}
    # The files as they are: nothing cast, nothing re-laid (channels_last auto is on here).
    fp32 = ("--dtype", "fp32", "--channels-last", "off")
    with tempfile.TemporaryDirectory(prefix="digests-") as tmp:
        cache = ["--digest-cache", tmp]
        # The first start fills the digest cache (as after a model update).
        out["empty_cache"] = serve_once(FOLDER, "torch", threads, *cache, *fp32)
        out["warm_cache"], out["floor"] = [], []
        for _ in range(repeats):
            out["warm_cache"].append(serve_once(FOLDER, "torch", threads, *cache, *fp32))
            out["floor"].append(load_floor(FOLDER, threads))
        # The stage's defaults: dtype auto (bf16 here: a cast) and channels_last auto (on).
        out["defaults"] = serve_once(FOLDER, "torch", threads, *cache)
        # The same with the weights stored in bf16: mapped, not cast. Its first start
        # hashes the copy's files (new paths to the digest cache): not recorded.
        variant = build_variant()
        warm_page_cache(variant)
        serve_once(variant, "torch", threads, *cache)
        out["defaults_variant"], out["variant_contiguous"] = [], []
        for _ in range(2):
            out["defaults_variant"].append(serve_once(variant, "torch", threads, *cache))
            # bf16 from the variant, channels_last off: what the layout's copy costs.
            off = ("--channels-last", "off")
            out["variant_contiguous"].append(serve_once(variant, "torch", threads, *cache, *off))
    out["no_cache"] = serve_once(FOLDER, "torch", threads, "--digest-cache", "", *fp32)
    return out


def cold_compile(threads: int) -> dict[str, Any]:
    """The start that compiles: the stage's defaults with compile=inductor and
    warm-up, so the compile of the native size lands before SERVING. Inductor's
    cache folder starts empty (a new pod) and is reused by the second start (a
    pod with a persistent cache volume); the warm-up alone, without compile, is
    the start to subtract."""
    warm_page_cache(FOLDER)
    out: dict[str, Any] = {"threads": threads}
    with (
        tempfile.TemporaryDirectory(prefix="digests-") as digests,
        tempfile.TemporaryDirectory(prefix="inductor-") as inductor,
    ):
        cache = ("--digest-cache", digests)
        serve_once(FOLDER, "torch", threads, *cache)  # fills the digest cache: not recorded
        out["warmup"] = serve_once(FOLDER, "torch", threads, *cache, "--warmup")
        env = {"TORCHINDUCTOR_CACHE_DIR": inductor}
        compiled = (*cache, "--warmup", "--compile", "inductor")
        out["compile_cold"] = serve_once(FOLDER, "torch", threads, *compiled, env_extra=env)
        out["compile_warm"] = serve_once(FOLDER, "torch", threads, *compiled, env_extra=env)
    return out


def cold_onnx(threads: int) -> dict[str, Any]:
    warm_page_cache(EXPORT)
    out: dict[str, Any] = {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="digests-") as tmp:
        cache = ["--digest-cache", tmp]
        out["empty_cache"] = serve_once(EXPORT, "onnxruntime", threads, *cache)
        out["warm_cache"] = serve_once(EXPORT, "onnxruntime", threads, *cache)
        out["warm_cache_warmup"] = serve_once(EXPORT, "onnxruntime", threads, *cache, "--warmup")
        # Without the optimised graphs: what a start costs on another machine.
        hidden = EXPORT / "onnx_model.json"
        manifest = json.loads(hidden.read_text())
        saved = manifest["settings"].pop("optimized")
        backup = hidden.read_text()
        hidden.write_text(json.dumps(manifest))
        try:
            out["plain_graphs"] = serve_once(EXPORT, "onnxruntime", threads, *cache)
        finally:
            hidden.write_text(backup)
        out["optimized_signature"] = saved
    return out


# --- per step -----------------------------------------------------------------------


def unet_steps(threads: int, backend: str, dtype: str, steps: int, warmup: bool) -> dict[str, Any]:
    """Guided UNet calls at 512 px through the stage model's own parts."""
    import torch

    from stageflow.inference import denoise
    from stageflow.inference.registry import create_model

    torch.set_num_threads(threads)
    folder = EXPORT if backend == "onnxruntime" else FOLDER
    started = time.perf_counter()
    model: Any = create_model(
        "sd-txt2img", folder, backend=backend, torch_threads=threads, dtype=dtype, warmup=warmup
    )
    model.load()
    load_s = time.perf_counter() - started
    parts = model.parts
    with torch.inference_mode():
        text = denoise.encode_prompts(parts, "epic game hero portrait", "", True, (SIDE, SIDE))
        sample = torch.randn(2, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(0))
        times = [_timed(lambda: parts.predict_noise(sample, torch.tensor(999), text))]
        times += [_timed(lambda: parts.predict_noise(sample, torch.tensor(999), text))]
        times += [
            _timed(lambda: parts.predict_noise(sample, torch.tensor(999), text))
            for _ in range(steps - 2)
        ]
        flops = _unet_flops(parts, sample, text) if backend == "torch" and dtype == "fp32" else None
    return {
        "backend": backend,
        "dtype": dtype,
        "warmup": warmup,
        "threads": threads,
        "load_s": round(load_s, 1),
        "step_s": [round(t, 2) for t in times],
        "steady_s": round(statistics.median(times[2:] or times), 2),
        "flops": flops,
        "peak_rss_mb": round(peak_rss_mb()),
    }


def parts_dtype(threads: int, rounds: int = 2) -> dict[str, Any]:
    """Each part of the folder in fp32 and in bf16, alternated round by round in one
    process: the text encoder, a guided UNet step, and the VAE decode and encode at
    512 px. Whether bf16 pays off is a question per part, not per model."""
    import torch

    from stageflow.inference import denoise
    from stageflow.inference.sd_parts import load_torch_parts

    torch.set_num_threads(threads)
    loaded = {dtype: load_torch_parts(FOLDER, dtype=dtype) for dtype in ("fp32", "bf16")}
    ids = loaded["fp32"].tokenize("epic game hero portrait")
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(0))
    image = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sample = torch.cat([latents, latents])
    seconds: dict[str, dict[str, list[float]]] = {d: {} for d in loaded}
    with torch.inference_mode():
        text = {
            d: denoise.encode_prompts(parts, "epic game hero portrait", "", True, (SIDE, SIDE))
            for d, parts in loaded.items()
        }
        for round_ in range(rounds):
            order = ("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32")
            for dtype in order:
                parts, times = loaded[dtype], seconds[dtype]
                cond = text[dtype]
                calls: dict[str, Callable[[], Any]] = {
                    "text encoder": partial(parts.encode_text, ids),
                    "UNet step (guided)": partial(
                        parts.predict_noise, sample, torch.tensor(999), cond
                    ),
                    "VAE decode": partial(parts.decode_latents, latents),
                    "VAE encode": partial(parts.encode_image, image),
                }
                for name, call in calls.items():
                    times.setdefault(name, []).append(round(_timed(call), 2))
    return {
        "threads": threads,
        "rounds": rounds,
        "side": SIDE,
        "seconds": seconds,
        "peak_rss_mb": round(peak_rss_mb()),
    }


def _unet_flops(parts: Any, sample: Any, text: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        parts.predict_noise(sample, torch.tensor(999), text)
    return float(counter.get_total_flops())


def parity(threads: int, steps: int = 4, rounds: int = 2) -> dict[str, Any]:
    """Our base stage vs diffusers' pipeline, same folder, seed and scheduler:
    whole runs and, from each side's own per-step callback, the UNet steps
    (guided), alternating which side goes first."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from stageflow.inference.interface import StageInputs, Txt2ImgParams
    from stageflow.inference.registry import create_model

    torch.set_num_threads(threads)
    model: Any = create_model("sd-txt2img", FOLDER, torch_threads=threads)
    model.load()
    pipe = StableDiffusionPipeline.from_pretrained(FOLDER, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    params = Txt2ImgParams(
        prompt="epic game hero portrait", steps=steps, seed=3, width=SIDE, height=SIDE
    )
    whole: dict[str, list[float]] = {"ours": [], "diffusers": []}
    step_s: dict[str, list[float]] = {"ours": [], "diffusers": []}
    images = {}

    def stamps(name: str) -> Callable[..., Any]:
        marks = [time.perf_counter()]

        def mark(*args: Any, **kwargs: Any) -> Any:
            marks.append(time.perf_counter())
            if len(marks) > 2:  # the first interval also holds the prompt encoding
                step_s[name].append(marks[-1] - marks[-2])
            return kwargs.get("callback_kwargs", {})

        return mark

    def ours() -> np.ndarray:
        image = model.run(params, StageInputs(), stamps("ours"), lambda: False)
        return np.asarray(image)

    def theirs() -> np.ndarray:
        mark = stamps("diffusers")
        out = pipe(
            params.prompt,
            negative_prompt=params.negative_prompt,
            generator=torch.Generator("cpu").manual_seed(params.seed),
            num_inference_steps=steps,
            guidance_scale=params.guidance_scale,
            height=SIDE,
            width=SIDE,
            output_type="np",
            callback_on_step_end=lambda pipe, i, t, callback_kwargs: mark(
                callback_kwargs=callback_kwargs
            ),
        ).images[0]
        return np.asarray((out * 255).round().astype(np.uint8))

    runs = {"ours": ours, "diffusers": theirs}
    for i in range(rounds):
        for name in ("ours", "diffusers") if i % 2 == 0 else ("diffusers", "ours"):
            started = time.perf_counter()
            images[name] = runs[name]()
            whole[name].append(time.perf_counter() - started)
    ours_step = statistics.median(step_s["ours"])
    theirs_step = statistics.median(step_s["diffusers"])
    return {
        "threads": threads,
        "steps": steps,
        "ours_s": [round(t, 1) for t in whole["ours"]],
        "diffusers_s": [round(t, 1) for t in whole["diffusers"]],
        "ours_step_s": [round(t, 2) for t in step_s["ours"]],
        "diffusers_step_s": [round(t, 2) for t in step_s["diffusers"]],
        "ratio": round(min(whole["ours"]) / min(whole["diffusers"]), 3),
        "step_ratio": round(ours_step / theirs_step, 3),
        "bit_identical": bool(np.array_equal(images["ours"], images["diffusers"])),
    }


# --- bf16 image quality -----------------------------------------------------------------

# (prompt, seed) of the quality-bf16 phase's images: a few, at ~1 min of steps each.
BF16_IMAGES = (("epic game hero portrait", 3), ("a red circle on a blue background", 7))


def quality_bf16(threads: int, steps: int = 4) -> dict[str, Any]:
    """The same images from the stage model in fp32 and in bf16 (each loaded through
    create_model, one at a time), scored bf16 against fp32: PSNR, SSIM, max levels."""
    import numpy as np
    import torch

    from bench.dtype_quality import compare
    from stageflow.inference.interface import StageInputs, Txt2ImgParams
    from stageflow.inference.registry import create_model

    torch.set_num_threads(threads)
    images: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}
    for dtype in ("fp32", "bf16"):
        model: Any = create_model("sd-txt2img", FOLDER, torch_threads=threads, dtype=dtype)
        model.load()
        images[dtype], seconds[dtype] = [], []
        for prompt, seed in BF16_IMAGES:
            params = Txt2ImgParams(prompt=prompt, steps=steps, seed=seed, width=SIDE, height=SIDE)
            started = time.perf_counter()
            image = model.run(params, StageInputs(), lambda _i, _n: None, lambda: False)
            seconds[dtype].append(round(time.perf_counter() - started, 1))
            images[dtype].append(np.asarray(image.convert("RGB")))
        model.unload()
    scores = [compare(a, b) for a, b in zip(images["fp32"], images["bf16"], strict=True)]
    return {
        "threads": threads,
        "steps": steps,
        "images": [f"{p!r}, seed {s}" for p, s in BF16_IMAGES],
        "psnr_db": [round(p, 2) for p, _s, _m in scores],
        "ssim": [round(s, 4) for _p, s, _m in scores],
        "max_levels": [m for _p, _s, m in scores],
        "fp32_s": seconds["fp32"],
        "bf16_s": seconds["bf16"],
    }


# --- VAE decode ------------------------------------------------------------------------


def vae_decode(threads: int, side: int, tiled: bool) -> dict[str, Any]:
    """One decode at `side` px through the real-size VAE, whole or tiled (own process)."""
    import torch

    from stageflow.inference import denoise
    from stageflow.inference.sd_parts import load_torch_parts
    from stageflow.inference.vae_tiling import VaeTiling

    torch.set_num_threads(threads)
    parts = load_torch_parts(FOLDER)
    loaded = peak_rss_mb()
    latents = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(0))
    tiling = VaeTiling(above_side=1 if tiled else 0)
    with torch.inference_mode():
        seconds = _timed(lambda: denoise.decode_latents(parts, latents, tiling))
    estimate = denoise.decode_shape(parts).peak_bytes(1, side // 8, side // 8) / 2**20
    return {
        "side": side,
        "tiled": tiled,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "after_load_mb": round(loaded),
        "estimate_mb": round(estimate),
    }


def vae(threads: int, big: bool, sides: tuple[int, ...] = (512, 1024, 2048)) -> dict[str, Any]:
    # Decodes of other sides recorded before stay: each side is minutes to redo.
    earlier = load_results().get("vae", {}).get("runs", [])
    runs = [r for r in earlier if r["side"] not in sides]
    for side in sides:
        for tiled in (False, True):
            if side == 2048 and not tiled and not big:
                continue  # ~10 GB: only with --big
            runs.append(in_child("vae-one", str(side), str(int(tiled)), threads=threads))
            # Each decode is minutes: keep what is done if a later one is stopped.
            record("vae", {"threads": threads, "runs": runs, "untiled_2048": big})
    return {"threads": threads, "runs": runs, "untiled_2048": big}


# --- ONNX Runtime memory settings -----------------------------------------------------

ORT_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults (arena, memory patterns, prepacking)": {},
    "arena off": {"arena": False},
    "memory patterns off": {"pattern": False},
    "arena and patterns off": {"arena": False, "pattern": False},
    "prepacking off": {"prepack": False},
    # The guided step as two calls of one row (cond, uncond): half the activations.
    "one row per call": {"rows": 1},
    "arena off, one row per call": {"arena": False, "rows": 1},
    "memory patterns off, one row per call": {"pattern": False, "rows": 1},
}


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ort_memory_one(threads: int, variant: str, steps: int = 2) -> dict[str, Any]:
    """The export's UNet session (the graph the stage would load) under one
    memory setting, alone in this process: where its RSS goes."""
    import numpy as np
    import onnxruntime as ort

    from stageflow.inference.onnx import layout
    from stageflow.inference.onnx.runtime import _options, uses_optimized

    settings = ORT_VARIANTS[variant]
    manifest = layout.read_manifest(EXPORT, verify=False)
    optimized = uses_optimized(manifest, ["CPUExecutionProvider"])
    path = (
        manifest.optimized_part(EXPORT, layout.UNET)
        if optimized
        else manifest.part(EXPORT, layout.UNET)
    )
    options = _options(threads, spinning=True)
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = settings.get("arena", True)
    options.enable_mem_pattern = settings.get("pattern", True)
    if not settings.get("prepack", True):
        options.add_session_config_entry("session.disable_prepacking", "1")
    before = _rss_now_mb()
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    create_s = time.perf_counter() - started
    created = _rss_now_mb()
    rows = settings.get("rows", 2)
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        kind = np.int64 if "int64" in i.type else np.float32
        if "hidden" in i.name:
            shape: tuple[int, ...] = (rows, 77, 768)
        elif "sample" in i.name:
            shape = (rows, 4, SIDE // 8, SIDE // 8)
        else:  # the timestep: a scalar or one per row
            shape = tuple(rows if not isinstance(d, int) else d for d in i.shape)
        feed[i.name] = (rng.standard_normal(shape) * (999 if kind is np.int64 else 1)).astype(kind)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        for _row in range(2 // rows):  # a guided step is two rows either way
            session.run(None, feed)
        times.append(round(time.perf_counter() - started, 2))
    return {
        "variant": variant,
        "optimized_graph": optimized,
        "threads": threads,
        "create_s": round(create_s, 1),
        "rss_before_mb": round(before),
        "rss_created_mb": round(created),
        "rss_after_steps_mb": round(_rss_now_mb()),
        "peak_rss_mb": round(peak_rss_mb()),
        "step_s": times,
        "weights_mb": round(
            sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*")) / 2**20
        ),
    }


def ort_memory(threads: int) -> dict[str, Any]:
    """Each variant in its own process; variants recorded before are kept (drop the
    phase from bench/results/realscale.json to measure them all again)."""
    warm_page_cache(EXPORT)
    runs = [
        r
        for r in load_results().get("ort-memory", {}).get("runs", [])
        if r["variant"] in ORT_VARIANTS
    ]
    done = {r["variant"] for r in runs}
    for variant in (v for v in ORT_VARIANTS if v not in done):
        runs.append(in_child("ort-memory-one", variant, threads=threads))
        record("ort-memory", {"threads": threads, "runs": runs})  # keep what is done
    return {"threads": threads, "runs": runs}


# --- export ----------------------------------------------------------------------------


def export(threads: int) -> dict[str, Any]:
    import shutil

    import torch

    from stageflow.inference.onnx.export import export_onnx

    torch.set_num_threads(threads)
    if EXPORT.exists():
        shutil.rmtree(EXPORT)
    report = export_onnx(FOLDER, EXPORT)
    size = sum(p.stat().st_size for p in EXPORT.rglob("*") if p.is_file())
    return {"seconds": round(report.seconds), "bytes": size, "peak_rss_mb": round(peak_rss_mb())}


# --- the report -----------------------------------------------------------------------


def _decode_estimate_mb(side: int) -> int:
    from stageflow.inference.vae_tiling import decode_peak_bytes

    latent = side // 8
    return round(decode_peak_bytes(1, latent, latent, factor=8, base_channels=128) / 2**20)


def _fmt(value: Any, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


DECISIONS = """\
### What the code does about each cost (and why)

- **Fingerprints** (`stageflow/inference/digests.py`): a file's sha256 is remembered under
  its stamp (resolved path, size, mtime_ns, ctime_ns, inode, device) in `digest_cache`
  (default `var/digest-cache`); any write or replacement changes the stamp and the file is
  hashed again (unit-tested: a same-size rewrite, a restored mtime, a replaced file). It
  serves the torch folder's fingerprint, the repository's check of a version's files and the
  ONNX export's verification alike.
- **ONNX Runtime graph optimisation** moves to compile time: `export_onnx` saves each graph as
  the CPU provider optimised it (`<part>.opt.onnx`, `SessionOptions.optimized_model_filepath`,
  weights in `.opt.onnx.data`) with the onnxruntime version and CPU features; the runtime loads
  it with `ORT_DISABLE_ALL` only where those match and only the CPU provider is asked for (an
  `ORT_ENABLE_ALL` graph carries CPU-specific NCHWc layouts), else the plain graph as before.
- **ONNX Runtime memory** (`stageflow/inference/onnx/runtime.py`): the arena stays on,
  memory patterns are off, and on the CPU provider the UNet runs one row per call (a
  guided step's two rows as two calls). The ort-memory table is why: a pattern plans one
  block for all of a call shape's activations, and with two rows the graph materialises
  attention scores of 1 GiB per matrix (2 × 8 heads × 4096² floats at 512 px) that torch's
  SDPA never holds; without patterns the arena allocates as the graph runs, and one row
  halves every activation, at the same step time. Prepacking stays on: off, the UNet's
  session was created 1.1 s sooner with the same peak and steps within noise, but two steps
  cannot rule out the slower products prepacking exists to avoid. `warmup` (off by
  default) makes two guided UNet steps and a VAE decode at the native size before SERVING:
  the first steps then run at the steady speed, at the price of a longer start (the cold
  start table shows both).
- **dtype** (`fp32`/`fp16`/`bf16`/`auto`): torch casts the parts at load; the loop stays
  fp32. `auto`, the stage processes' default, is bf16 where the CPU reports amx_bf16 or
  avx512_bf16 and the model has at least 256 MiB of weights, fp32 elsewhere
  (stageflow/inference/hardware.py): bf16 made the whole job 1.35× faster per image here
  on a quiet machine (1.61× in an earlier run under load; bench/perimage.py) and the parts
  table shows where; the fixtures, a few MiB, run slower in bf16. A folder can store its
  weights in bf16 beside the fp32 ones (`stageflow models variant`): the loader maps them
  instead of casting, which the cold start table measures. bf16 against fp32 image by
  image is in docs/quality.md (`make dtype-quality`), at 512 px in the quality-bf16 phase.
  ONNX bf16 is refused.
- **channels_last** (`auto`, the default: on for torch diffusion models of 256 MiB and
  more): a whole 2-step image in 0.92× the contiguous time in fp32 and bf16 in process
  (bench/compile.py), the 20-step job through the services 0.97× bf16's (bench/perimage.py
  bf16,defaults); its copy of the conv weights costs start time and 2.5 GB of resident
  pages (the cold start table).
- **VAE tiling** (`stageflow/inference/vae_tiling.py`): tiles above `vae_tile_above_side`
  (1536 px) or when the estimate exceeds `vae_memory_budget_mb`; on the fixture VAE, 128 px
  tiles are 22.0 dB from a whole decode (diffusers' own `tiled_decode`, same tiles: 21.0 dB).
"""


def floor_words(warm: float, ct: dict[str, Any]) -> str:
    """The torch start beside the floor measured between its starts."""
    floor = min(ct["floor"], key=lambda r: r["ready_s"])
    starts = statistics.median(r["serving_s"] for r in ct["warm_cache"])
    floors = statistics.median(r["ready_s"] for r in ct["floor"])
    share = warm - floor["ready_s"]
    if abs(share) < 0.05:
        own = "the stage's start equals the floor (within 0.05 s)"
    elif share > 0:
        own = (
            f"the stage's own share is {share:.2f} s (its gRPC server, settings, the digest "
            "check, the step wiring)"
        )
    else:
        own = (
            f"the stage reached SERVING {-share:.2f} s sooner than the floor: the collection "
            "pause during its start (stageflow.core.collector) saves more than its own work costs"
        )
    return (
        f"The floor under it, measured between those starts: a fresh interpreter that "
        f"imports torch, diffusers and transformers and loads the four parts with "
        f"`from_pretrained`, nothing of stageflow, is ready in {floor['ready_s']} s at best "
        f"(imports {floor['imports_s']} s, loading {floor['load_s']} s), median {floors} s "
        f"against the stage's median {starts} s; at best {own}, {warm / floor['ready_s']:.2f}× "
        "the floor. The libraries' imports are most of any torch start on this machine."
    )


def write_report(path: Path, results: dict[str, Any], threads: int) -> None:
    lines = [
        "## Real scale (random-weight SD 1.5-size folder)",
        "",
        "`make bench-realscale` (`bench/realscale.py`; phases can be run alone, "
        "results accumulate in bench/results/realscale.json, committed). Each figure below says "
        "when it was measured and the machine's load average then; a phase not run says so.",
        "",
    ]
    m = results.get("machine")
    lines.append(f"- machine: {m['line']}; CPU features: {m['cpu_features']}" if m else "")
    b = results.get("build")
    if b:
        lines.append(
            f"- folder: UNet {b['params_m']['unet']} M, VAE {b['params_m']['vae']} M, text "
            f"encoder {b['params_m']['text_encoder']} M parameters, CLIP vocabulary of "
            f"{b['vocab']} tokens, {b['bytes'] / 1e9:.2f} GB on disk (built in {b['seconds']} s)"
        )
    mm = results.get("matmul")
    if mm:
        lines.append(
            f"- matmul peak (4096², {mm['threads']} threads): fp32 {mm['fp32_gflops']} GFLOP/s, "
            f"bf16 {mm['bf16_gflops']} GFLOP/s ({mm['at']})"
        )
    lp = results.get("load-parts")
    lines += ["", "### Where a torch start goes (one fresh process, warm page cache)", ""]
    if lp:
        lines += table(
            ["part", "seconds"],
            [
                ["import torch, diffusers, transformers", f"{lp['imports_s']}"],
                ["fingerprint, every file hashed (before)", f"{lp['hash_all_s']}"],
                ["fingerprint, digest cache warm (now)", f"{lp['hash_cached_s']}"],
                ["read the weights (`load_torch_parts`)", f"{lp['load_weights_s']}"],
            ],
        )
        lines.append(f"\n({lp['threads']} threads; {lp['at']}.)")
    else:
        lines.append("Not measured yet.")
    se = results.get("sessions")
    lines += ["", "### ONNX Runtime session creation: plain vs compile-time optimised graph", ""]
    if se:
        lines += table(
            ["graph (real size)", "plain, optimised at load", "saved optimised, optimisation off"],
            [
                [part, f"{se[part]['plain_s']} s", f"{se[part]['optimized_s']} s"]
                for part in ("vae_decoder", "text_encoder")
            ],
        )
        lines.append(f"\n(Best of 3 each, alternated; {se['at']}.)")
    else:
        lines.append("Not measured yet.")
    lines += ["", "### Cold start to SERVING (base stage process, warm page cache)", ""]
    ct, co = results.get("cold-torch"), results.get("cold-onnx")
    rows = []
    if ct:
        warm = min(r["serving_s"] for r in ct["warm_cache"])
        rows += [
            [
                "torch, digest cache off (every file hashed)",
                _fmt(ct["no_cache"]["serving_s"], " s"),
            ],
            ["torch, digest cache empty (first start)", _fmt(ct["empty_cache"]["serving_s"], " s")],
            [
                "torch, digest cache warm (fp32 as the files are: nothing cast, contiguous)",
                f"{warm} s",
            ],
        ]
        if "auto_dtype" in ct:  # recorded before channels_last had its auto
            rows.append(
                [
                    "torch, dtype auto (bf16 on this CPU: cast at load), cache warm",
                    _fmt(ct["auto_dtype"]["serving_s"], " s"),
                ]
            )
        if "defaults" in ct:
            rows.append(
                [
                    "torch, the stage's defaults (dtype auto: bf16 here, cast at load; "
                    "channels_last auto: on), cache warm",
                    f"{_fmt(ct['defaults']['serving_s'], ' s')} "
                    f"(RSS {ct['defaults']['rss_mb']:.0f} MiB)",
                ]
            )
        if ct.get("defaults_variant"):
            best = min(ct["defaults_variant"], key=lambda r: r["serving_s"])
            rows.append(
                [
                    "torch, the same defaults, the weights also stored in bf16 "
                    "(`stageflow models variant`: mapped, not cast), cache warm",
                    f"{_fmt(best['serving_s'], ' s')} (RSS {best['rss_mb']:.0f} MiB)",
                ]
            )
        if ct.get("variant_contiguous"):
            best = min(ct["variant_contiguous"], key=lambda r: r["serving_s"])
            rows.append(
                [
                    "torch, bf16 from the stored variant, channels_last off, cache warm",
                    f"{_fmt(best['serving_s'], ' s')} (RSS {best['rss_mb']:.0f} MiB)",
                ]
            )
    cc = results.get("cold-compile")
    if cc:
        rows += [
            [
                "torch, the stage's defaults + warm-up (a guided step pair and a decode at "
                "512 px before SERVING)",
                _fmt(cc["warmup"]["serving_s"], " s"),
            ],
            [
                "torch, the same + compile inductor, inductor's cache empty (a new pod)",
                _fmt(cc["compile_cold"]["serving_s"], " s"),
            ],
            [
                "torch, the same + compile inductor, inductor's cache warm (a cache volume)",
                _fmt(cc["compile_warm"]["serving_s"], " s"),
            ],
        ]
    if co:
        rows += [
            ["onnxruntime, plain graphs", _fmt(co["plain_graphs"]["serving_s"], " s")],
            [
                "onnxruntime, optimised graphs, cache empty",
                _fmt(co["empty_cache"]["serving_s"], " s"),
            ],
            [
                "onnxruntime, optimised graphs, cache warm",
                _fmt(co["warm_cache"]["serving_s"], " s"),
            ],
            ["onnxruntime, the same + warm-up", _fmt(co["warm_cache_warmup"]["serving_s"], " s")],
        ]
    if rows:
        lines += table(["start", "to SERVING"], rows)
    if ct:
        warm = min(r["serving_s"] for r in ct["warm_cache"])
        lines.append(f"\nGoal torch ≤ 5 s: {verdict(warm <= 5)} ({warm} s; {ct['at']}).")
        if ct.get("floor"):
            lines.append(floor_words(warm, ct))
        if ct.get("defaults_variant"):
            best = min(r["serving_s"] for r in ct["defaults_variant"])
            lines.append(
                f"With the stage's defaults (bf16 and channels_last on this CPU) the start is "
                f"{ct['defaults']['serving_s']} s casting at load and {best} s from a stored "
                f"bf16 variant: the ≤ 5 s goal is {verdict(best <= 5)} in that configuration."
            )
        if ct.get("variant_contiguous") and ct.get("defaults_variant"):
            plain = min(ct["variant_contiguous"], key=lambda r: r["serving_s"])
            laid = min(ct["defaults_variant"], key=lambda r: r["serving_s"])
            lines.append(
                f"bf16 from the variant without channels_last starts in {plain['serving_s']} s "
                f"({verdict(plain['serving_s'] <= 5)}): channels_last's copy of the conv weights "
                f"adds {laid['serving_s'] - plain['serving_s']:.2f} s and "
                f"{laid['rss_mb'] - plain['rss_mb']:.0f} MiB of RSS to the start (for a whole "
                "image in 0.92× the contiguous time, bench/compile.py)."
            )
    else:
        lines.append("\ntorch cold start: not measured yet.")
    if cc:
        base = cc["warmup"]["serving_s"]
        lines.append(
            f"Compiling in the start (compile inductor with warm-up) adds "
            f"{cc['compile_cold']['serving_s'] - base:.1f} s to the warm-up start with an empty "
            f"inductor cache and {cc['compile_warm']['serving_s'] - base:.1f} s with the cache "
            f"the first start left ({cc['at']})."
        )
    if co:
        lines.append(
            f"Goal ONNX ≤ 10 s: {verdict(co['warm_cache']['serving_s'] <= 10)} "
            f"({co['warm_cache']['serving_s']} s; {co['at']})."
        )
    else:
        lines.append("ONNX cold start: not measured yet (needs the export phase).")
    lines += ["", "### UNet step at 512 px with guidance (batch 2)", ""]
    steps = [results[k] for k in ("steps-torch", "steps-bf16") if k in results]
    steps += results.get("steps-onnx", {}).get("runs", [])
    peak = (mm or {}).get("fp32_gflops")
    flops = (results.get("steps-torch") or {}).get("flops")
    if steps:
        rows = []
        for s in steps:
            share = (
                f"{flops / s['steady_s'] / 1e9 / peak:.0%}"
                if flops and peak and s["dtype"] == "fp32"
                else "–"
            )
            rows.append(
                [
                    f"{s['backend']} {s['dtype']}" + (" + warm-up" if s["warmup"] else ""),
                    ", ".join(f"{t}" for t in s["step_s"][:3]),
                    f"{s['steady_s']} s",
                    share,
                    f"{s['peak_rss_mb']} MiB",
                ]
            )
        lines += table(
            ["backend", "first steps (s)", "steady step", "of fp32 peak", "peak RSS"], rows
        )
        if flops:
            lines.append(f"\nOne step is {flops / 1e12:.2f} TFLOP (torch's FLOP counter).")
    else:
        lines.append("Not measured yet.")
    pd = results.get("parts-dtype")
    lines += ["", "### Each part in fp32 and in bf16 (512 px)", ""]
    if pd:
        rows = []
        for part, fp32_times in pd["seconds"]["fp32"].items():
            fp32, bf16 = min(fp32_times), min(pd["seconds"]["bf16"][part])
            rows.append([part, f"{fp32} s", f"{bf16} s", fmt_ratio(fp32 / bf16)])
        lines += table(["part", "fp32", "bf16", "bf16 speed-up"], rows)
        lines.append(
            f"\n(Best of {pd['rounds']} each, fp32 and bf16 alternated in one process; {pd['at']}.)"
        )
    else:
        lines.append("Not measured yet.")
    om = results.get("ort-memory")
    lines += ["", "### ONNX Runtime's UNet session under each memory setting (512 px)", ""]
    if om:
        torch_peak = (results.get("steps-torch") or {}).get("peak_rss_mb")
        rows = [
            [
                r["variant"],
                f"{r['rss_created_mb']} MiB",
                f"{r['peak_rss_mb']} MiB",
                ", ".join(str(t) for t in r["step_s"]),
                f"{r['create_s']} s",
            ]
            for r in om["runs"]
        ]
        lines += table(
            ["setting", "RSS after creation", "peak RSS, 2 steps", "steps (s)", "creation"], rows
        )
        first = om["runs"][0]
        graph = "optimised" if first["optimized_graph"] else "plain"
        lines.append(
            f"\nThe UNet session alone in a fresh process ({graph} "
            f"graph, {first['weights_mb']} MiB of graph and weights on disk; {om['at']})."
            + (f" torch's whole base model peaked at {torch_peak} MiB." if torch_peak else "")
        )
    else:
        lines.append("Not measured yet.")
    p = results.get("parity")
    lines += ["", "### Service vs diffusers, in process", ""]
    if p:
        lines.append(
            f"{p['steps']} steps at {SIDE} px, whole runs: ours {p['ours_s']} s, "
            f"diffusers {p['diffusers_s']} s (ratio of the best {p['ratio']}); bit-identical: "
            f"{p['bit_identical']} ({p['at']})."
        )
        if "step_ratio" in p:
            lines.append(
                f"\nGuided UNet steps (each side's own step callback; the first step, which "
                f"also holds the prompt encoding, left out): ours {p['ours_step_s']} s, "
                f"diffusers {p['diffusers_step_s']} s; median ratio {p['step_ratio']} "
                f"(goal ≤ 1.02: {verdict(p['step_ratio'] <= 1.02)})."
            )
    else:
        lines.append("Not measured yet.")
    q = results.get("quality-bf16")
    lines += ["", "### bf16 against fp32, images", ""]
    if q:
        lines.append(
            f"{q['steps']} steps at {SIDE} px, the stage model in fp32 and in bf16, the same "
            f"images ({'; '.join(q['images'])}): bf16's PSNR from fp32 {q['psnr_db']} dB, "
            f"SSIM {q['ssim']}, largest level difference {q['max_levels']}; whole runs "
            f"fp32 {q['fp32_s']} s, bf16 {q['bf16_s']} s ({q['at']}). Random weights: the "
            "images are not pictures, so this measures how far bf16's rounding carries, "
            "not how a trained model's picture changes (docs/quality.md has the trained "
            "fixture's)."
        )
    else:
        lines.append("Not measured yet.")
    v = results.get("vae")
    lines += ["", "### VAE decode, whole vs tiled (real-size VAE alone)", ""]
    if v:
        rows = [
            [
                f"{r['side']} px",
                "tiled" if r["tiled"] else "whole",
                f"{r['seconds']} s" + (f" ({r['measured']})" if "measured" in r else ""),
                f"{r['peak_rss_mb'] - r['after_load_mb']} MiB",
                # The estimate as the code now computes it (its constant is
                # calibrated on this table's whole decodes).
                f"{_decode_estimate_mb(r['side'])} MiB",
            ]
            for r in v["runs"]
        ]
        lines += table(
            [
                "size",
                "decode",
                "time",
                "peak RSS over the loaded VAE",
                "whole-decode estimate (torch)",
            ],
            rows,
        )
    else:
        lines.append("Not measured yet.")
    e = results.get("export")
    if e:
        lines.append(
            f"\nExport with optimised graphs: {e['seconds']} s, {e['bytes'] / 1e9:.1f} GB, "
            f"peak RSS {e['peak_rss_mb']} MiB ({e['at']})."
        )
    missing = [ph for ph in PHASES if ph not in results]
    if missing:
        lines.append(f"\nPhases not measured in the recorded results: {', '.join(missing)}.")
    notes = ROOT / "bench" / "realscale_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8").strip()]
    lines += ["", DECISIONS.strip()]
    write_section(path, SECTION, "\n".join(line for line in lines if line is not None))


# --- entry ------------------------------------------------------------------------------


def run_phase(phase: str, threads: int, big: bool, vae_sides: tuple[int, ...]) -> None:
    print(f"[{utc_now()}] {phase} ...", flush=True)
    if phase in ("build", "export"):
        value = in_child(phase, threads=threads)  # its peak RSS is its own
    elif phase == "machine":
        value = machine_info(threads)
    elif phase == "matmul":
        value = in_child("matmul", threads=threads)
    elif phase in ("load-parts", "sessions"):
        value = in_child(phase, threads=threads)
    elif phase == "cold-torch":
        value = cold_torch(threads)
    elif phase == "cold-compile":
        value = cold_compile(threads)
    elif phase == "cold-onnx":
        value = cold_onnx(threads)
    elif phase == "steps-torch":
        value = in_child("steps", "torch", "fp32", "0", threads=threads)
    elif phase == "steps-bf16":
        value = in_child("steps", "torch", "bf16", "0", threads=threads)
    elif phase == "steps-onnx":
        runs = [in_child("steps", "onnxruntime", "fp32", w, threads=threads) for w in ("0", "1")]
        value = {"runs": runs}
    elif phase == "ort-memory":
        value = ort_memory(threads)
    elif phase == "parts-dtype":
        value = in_child("parts-dtype", threads=threads)
    elif phase == "parity":
        value = in_child("parity", threads=threads)
    elif phase == "quality-bf16":
        value = in_child("quality-bf16", threads=threads)
    elif phase == "vae":
        value = vae(threads, big, vae_sides)
    else:
        raise SystemExit(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
    record(phase, value)
    print(json.dumps(value), flush=True)


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "build": lambda threads: build(threads),
    "export": lambda threads: export(threads),
    "matmul": lambda threads: matmul_peak(threads),
    "load-parts": lambda threads: load_parts(threads),
    "sessions": lambda threads: sessions(threads),
    "parts-dtype": lambda threads: parts_dtype(threads),
    "ort-memory-one": lambda threads, variant: ort_memory_one(threads, variant),
    "parity": lambda threads: parity(threads),
    "quality-bf16": lambda threads: quality_bf16(threads),
    "steps": lambda threads, backend, dtype, warm: unet_steps(
        threads, backend, dtype, steps=5, warmup=warm == "1"
    ),
    "vae-one": lambda threads, side, tiled: vae_decode(threads, int(side), tiled == "1"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phases", nargs="*", help=f"default all: {' '.join(PHASES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--big", action="store_true", help="also the whole 2048 px decode")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--vae-sides", type=int, nargs="+", default=[512, 1024, 2048], help="vae phase sizes"
    )
    args = parser.parse_args(argv)
    if args.phases and args.phases[0] == "_child":
        name, *rest = args.phases[1:]
        print(json.dumps(CHILDREN[name](args.threads, *rest)))
        return
    if not args.report_only:
        for phase in args.phases or PHASES:
            run_phase(phase, args.threads, args.big, tuple(args.vae_sides))
    write_report(args.out, load_results(), args.threads)


if __name__ == "__main__":
    main()
