"""ONNX Runtime backend: sessions over an exported folder, as `DiffusionParts`.

Execution providers are asked for by name and never silently dropped: a
provider this onnxruntime build lacks is a `ProviderUnavailable` error naming
it and what is available, and after each session is created we check it kept
the providers asked for (onnxruntime quietly falls back to CPU when, say, the
CUDA libraries fail to load).

Session settings, decided for a stage that serves one model for hours:

- the graph ONNX Runtime optimised at compile time (`<part>.opt.onnx`,
  `export.save_optimized`) is loaded with optimisation off when this
  process's onnxruntime version and CPU features are the ones it was made
  with and only the CPU provider is asked for: the graph-optimisation time
  leaves the cold start. Elsewhere (another CPU, a GPU provider, another
  onnxruntime) the plain graph is loaded and optimised here, as before; an
  ENABLE_ALL graph holds CPU-specific layouts (NCHWc blocks sized to the
  vector width), so it is never used on a machine it was not made for.
- the CPU memory arena stays on and memory patterns are off. A pattern
  plans one block for all of a call shape's activations; on the real-size
  UNet at 512 px that block made the process peak at 8.1 GB where the
  arena alone, allocating as the graph runs, peaked at 5.8 GB, with the
  same step time (bench/realscale.py ort-memory). The arena without
  patterns still reuses its chunks step after step. The first calls at a
  new shape grow the arena: the stage's `warmup` setting makes those calls
  at load, at the model's native size.

This module imports onnxruntime, numpy, torch (the loop's tensors) and a
tokenizer; never diffusers: an ONNX-only stage process does not pay for it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stageflow.core.errors import FailedPrecondition
from stageflow.core.logging import get_logger
from stageflow.inference import hardware
from stageflow.inference.onnx import layout
from stageflow.inference.scheduler import scheduler_factory
from stageflow.inference.sd_parts import Conditioning, DiffusionParts, NoiseFn, text_conditioner

log = get_logger(__name__)

# Short names accepted in settings and model.yaml; full provider names work too.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class ProviderUnavailable(FailedPrecondition):
    """An execution provider was asked for that this onnxruntime cannot give."""


def resolve_providers(names: Sequence[str]) -> list[str]:
    """Provider names as onnxruntime spells them; raises ProviderUnavailable for
    one this build lacks. An empty list means the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    resolved = [PROVIDER_ALIASES.get(n.lower(), n) for n in (names or DEFAULT_PROVIDERS)]
    for name, full in zip(names or DEFAULT_PROVIDERS, resolved, strict=True):
        if full not in available:
            raise ProviderUnavailable(
                f"execution provider {name!r} ({full}) is not available in this onnxruntime "
                f"{ort.__version__} build; available: {', '.join(available)}. CUDA and "
                "TensorRT providers need the onnxruntime-gpu package and their libraries"
            )
    return list(dict.fromkeys(resolved))


# CPU features onnxruntime's CPU kernels (MLAS) pick code paths and layouts by.
_ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def optimized_signature() -> dict[str, Any]:
    """What an optimised graph depends on: onnxruntime's version, the provider,
    the CPU architecture and the vector features its kernels use."""
    import onnxruntime as ort

    flags = hardware.cpu_flags()
    return {
        "onnxruntime": ort.__version__,
        "providers": "CPUExecutionProvider",
        "machine": platform.machine(),
        "cpu_features": ",".join(f for f in _ISA_FLAGS if f in flags),
    }


def _options(threads: int, spinning: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # A fixed thread count gives bit-identical results run to run.
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Intra-op threads spin-wait after a run (onnxruntime's default). Measured here at 2
    # threads: without it the UNet step is ~40% slower; with it, torch work that runs
    # right after a session call in the same process (other backends, benchmarks) is
    # slowed while the threads spin. A stage serves one backend, so spinning stays on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Memory patterns off: measured on the real-size UNet at 512 px (bench/realscale.py
    # ort-memory), the pattern's one planned block per call shape peaked at 8.1 GB
    # where allocating as the graph runs peaked at 5.8 GB, at the same step time.
    options.enable_mem_pattern = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def save_optimized_graph(graph: Path, target: Path) -> None:
    """Optimise `graph` for the CPU provider and save the result as `target`
    (its weights in `<target>.data` beside it, which keeps it under the
    protobuf limit at any size)."""
    import onnxruntime as ort

    options = _options(0, spinning=False)
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"{target.name}.data"
    )
    # Small tensors stay inline; large ones go to the data file.
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    try:
        ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise FailedPrecondition(f"{graph}: onnxruntime cannot optimise it: {err}") from err


def create_session(
    path: Path,
    providers: Sequence[str],
    threads: int = 0,
    *,
    spinning: bool = True,
    optimized: bool = False,
) -> Any:
    """An InferenceSession on exactly `providers` (resolved names), `threads`
    intra-op threads (0: onnxruntime's default, one per physical core);
    `optimized`: `path` is already optimised (compile time), so optimisation is off."""
    import onnxruntime as ort

    options = _options(threads, spinning)
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise FailedPrecondition(f"{path}: onnxruntime cannot load it: {err}") from err
    kept = session.get_providers()
    missing = [p for p in providers if p not in kept]
    if missing:
        raise ProviderUnavailable(
            f"{path.name}: onnxruntime created the session without {', '.join(missing)} "
            f"(it kept {', '.join(kept)}); refusing to fall back silently"
        )
    return session


class OrtPart:
    """One graph: torch tensors in, torch float32 tensors out.

    Inputs are cast to the graph's own dtypes, so fp16 exports take the same
    float32 tensors the loop holds.
    """

    def __init__(
        self, path: Path, providers: Sequence[str], threads: int, *, optimized: bool = False
    ) -> None:
        self.session = create_session(path, providers, threads, optimized=optimized)
        self.inputs = [
            (i.name, _NUMPY_TYPES.get(i.type, np.float32)) for i in self.session.get_inputs()
        ]
        self.output = self.session.get_outputs()[0].name

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        feed = {
            name: t.detach().cpu().numpy().astype(dtype, copy=False)
            for (name, dtype), t in zip(self.inputs, tensors, strict=True)
        }
        (out,) = self.session.run([self.output], feed)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def uses_optimized(manifest: layout.OnnxManifest, providers: Sequence[str]) -> bool:
    """Whether the export's compile-time optimised graphs are valid in this
    process: made by this onnxruntime on a CPU with these features, for the
    CPU provider alone (which is what is asked for)."""
    made = manifest.optimized
    return (
        bool(made)
        and list(providers) == list(DEFAULT_PROVIDERS)
        and made == (optimized_signature())
    )


def open_part(
    manifest: layout.OnnxManifest,
    folder: Path,
    name: str,
    providers: Sequence[str],
    threads: int,
) -> OrtPart:
    """Part `name`'s session: its optimised graph where valid, else its plain one."""
    optimized = manifest.optimized_part(folder, name)
    if uses_optimized(manifest, providers) and optimized.is_file():
        return OrtPart(optimized, providers, threads, optimized=True)
    return OrtPart(manifest.part(folder, name), providers, threads)


# Rows per UNet call on the CPU provider. A guided step's two rows (and a batch's
# more) run as calls of one row: the graph materialises attention scores, 1 GiB per
# matrix for two rows at 512 px, and one row halves every activation. Measured on
# the real-size UNet at 512 px (bench/realscale.py ort-memory): peak 4.7 GB against
# 5.8 GB for two rows per call, with the step no slower (the CPU kernels are as
# efficient on one row's products). A GPU provider gets the whole batch (0).
CPU_UNET_ROWS = 1


def unet_caller(unet: Callable[..., torch.Tensor], rows: int) -> NoiseFn:
    """`predict_noise` over the UNet graph, `rows` rows per call (0: all at once).
    The graph takes the timestep as a (1,) float tensor."""

    def predict_noise(sample: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        step = t.reshape(1).float()
        if rows <= 0 or sample.shape[0] <= rows:
            return unet(sample, step, cond.text)
        return torch.cat(
            [
                unet(sample[i : i + rows], step, cond.rows(i, i + rows).text)
                for i in range(0, sample.shape[0], rows)
            ]
        )

    return predict_noise


def load_onnx_parts(
    folder: Path,
    providers: Sequence[str] = (),
    threads: int = 0,
) -> DiffusionParts:
    folder = Path(folder)
    manifest = layout.read_manifest(folder, verify=False)
    if manifest.kind != layout.KIND_SD:
        raise FailedPrecondition(f"{folder} holds a {manifest.kind} export, not Stable Diffusion")
    names = resolve_providers(providers)
    log.info(
        "onnxruntime sessions",
        folder=str(folder),
        providers=names,
        threads=threads,
        optimized_graphs=uses_optimized(manifest, names),
    )
    parts = {name: open_part(manifest, folder, name, names, threads) for name in layout.SD_PARTS}
    unet = parts[layout.UNET]
    cfg = manifest.config
    tokenize = tokenizer_fn(folder / "tokenizer", int(cfg["max_token_length"]))
    encode_text = parts[layout.TEXT_ENCODER]
    return DiffusionParts(
        tokenize=tokenize,
        encode_text=encode_text,
        condition=text_conditioner(tokenize, encode_text),
        predict_noise=unet_caller(
            unet, rows=CPU_UNET_ROWS if names == ["CPUExecutionProvider"] else 0
        ),
        encode_image=parts[layout.VAE_ENCODER],
        decode_latents=parts[layout.VAE_DECODER],
        new_scheduler=scheduler_factory(folder / "scheduler"),
        latent_channels=int(cfg["latent_channels"]),
        scaling_factor=float(cfg["scaling_factor"]),
        vae_scale_factor=int(cfg["vae_scale_factor"]),
        unet_levels=int(cfg["unet_levels"]),
        device=torch.device("cpu"),
        weights_dtype=manifest.dtype,
        # Older exports did not record it: SD VAEs' 128.
        vae_base_channels=int(cfg.get("vae_base_channels", 128)),
        vae_attention_quadratic=True,
    )


def load_onnx_upscaler(
    folder: Path, providers: Sequence[str] = (), threads: int = 0
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """The upscaler graph as `net(image) -> upscaled` and its scale."""
    folder = Path(folder)
    manifest = layout.read_manifest(folder, verify=False)
    if manifest.kind != layout.KIND_ESRGAN:
        raise FailedPrecondition(f"{folder} holds a {manifest.kind} export, not an upscaler")
    names = resolve_providers(providers)
    log.info("onnxruntime sessions", folder=str(folder), providers=names, threads=threads)
    net = open_part(manifest, folder, layout.UPSCALER, names, threads)
    return net, int(manifest.config["scale"])


def tokenizer_fn(folder: Path, max_length: int) -> Callable[[str], torch.Tensor]:
    # transformers' tokenizer, not diffusers: the same ids as the torch backend.
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)

    def tokenize(text: str) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            text,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    return tokenize
