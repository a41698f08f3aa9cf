"""Backends by name: what loads a model folder's parts for each runtime.

A model class asks its backend for the parts it drives (`DiffusionParts`
for the diffusion stages, an upscaling network for ESRGAN) and for the
folder's fingerprint; the model's own code is the same for every backend.
A new backend is one `Backend` entry here, not a branch in each model.

Loaders import their runtime when called, so `import stageflow.inference.backends`
costs nothing and a torch-only process never imports onnxruntime (nor an
ONNX-only one diffusers).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.digests import NO_CACHE, DigestCache

if TYPE_CHECKING:
    import torch

    from stageflow.inference.sd_parts import DiffusionParts

    # image in [0, 1] (B, 3, H, W) -> upscaled (B, 3, sH, sW)
    UpscaleNet = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackendOptions:
    device: str = "cpu"
    # Execution providers, for the backends that have them (onnxruntime).
    providers: tuple[str, ...] = ()
    # Intra-op threads (0: the runtime's default); pinned for reproducible output.
    threads: int = 0
    # Where built engines are cached, for the backends that build them (tensorrt);
    # None: the backend's default.
    engine_cache: Path | None = None
    # The precision to load weights in, for backends that cast at load (torch).
    dtype: str = "fp32"
    # Where file digests are remembered between starts (the fingerprint's cost).
    digests: DigestCache = NO_CACHE
    # torch.compile of the UNet and VAE decode ("off" or "inductor") and their
    # memory format, for backends that run eager modules (torch;
    # stageflow.inference.compiled).
    compile: str = "off"
    channels_last: bool = False


class BackendUnavailable(FailedPrecondition):
    """The backend's runtime library is not installed in this process."""


@dataclass(frozen=True)
class Backend:
    name: str
    diffusion: Callable[[Path, BackendOptions], DiffusionParts]
    # -> (network, its scale)
    upscaler: Callable[[Path, BackendOptions], tuple[UpscaleNet, int]]
    fingerprint: Callable[[Path, BackendOptions], str]
    takes_providers: bool = False
    # The importable module the backend needs, checked before loading.
    requires: str = ""
    # -> the precision a compiled folder was exported in; None: chosen at load
    # (BackendOptions.dtype), as torch casts its weights.
    exported_dtype: Callable[[Path], str] | None = None
    # Whether it runs eager modules that `compile` and `channels_last` apply to;
    # an exported graph is compiled already and refuses them.
    takes_graph_options: bool = False

    @property
    def fixed_dtype(self) -> bool:
        return self.exported_dtype is not None

    def dtype_of(self, folder: Path) -> str:
        assert self.exported_dtype is not None
        return self.exported_dtype(folder)


# --- torch ----------------------------------------------------------------------------


def _torch_diffusion(folder: Path, options: BackendOptions) -> DiffusionParts:
    from stageflow.inference.compiled import GraphOptions
    from stageflow.inference.sd_parts import load_torch_parts

    graph = GraphOptions(options.compile, options.channels_last)
    return load_torch_parts(folder, options.device, options.dtype, graph)


def _torch_upscaler(folder: Path, options: BackendOptions) -> tuple[UpscaleNet, int]:
    import torch

    from stageflow.inference.sd_parts import torch_dtype
    from stageflow.inference.sr_archs import load_upscaler

    if options.compile != "off":
        raise FailedPrecondition(
            f"compile {options.compile}: the torch upscaler runs eager (compile applies to "
            "the diffusion stages' UNet and VAE decoder); set compile off"
        )
    # Any: torch's annotations of Module.to take no memory_format.
    net: Any
    net, config = load_upscaler(folder)
    weights = torch_dtype(options.dtype)
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    net = net.to(options.device, weights).to(memory_format=layout)
    return CastingUpscaler(net, weights, layout), int(config.scale)


class CastingUpscaler:
    """The torch upscaler in the dtype and memory format it is served in: it takes
    the stage's float32 tiles as they are and returns its own dtype (the stage
    takes `.float()` before it blends the tiles, in float32 whatever the dtype)."""

    def __init__(
        self, net: torch.nn.Module, dtype: torch.dtype, layout: torch.memory_format
    ) -> None:
        self.net, self.dtype, self.layout = net, dtype, layout

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.to(self.dtype).contiguous(memory_format=self.layout))


def _folder_fingerprint(folder: Path, options: BackendOptions) -> str:
    from stageflow.inference.base import folder_fingerprint

    return folder_fingerprint(folder, options.digests)


# --- onnxruntime ----------------------------------------------------------------------


def _ort_diffusion(folder: Path, options: BackendOptions) -> DiffusionParts:
    from stageflow.inference.onnx.runtime import load_onnx_parts

    return load_onnx_parts(folder, options.providers, options.threads)


def _ort_upscaler(folder: Path, options: BackendOptions) -> tuple[UpscaleNet, int]:
    from stageflow.inference.onnx.runtime import load_onnx_upscaler

    return load_onnx_upscaler(folder, options.providers, options.threads)


def _export_fingerprint(folder: Path, options: BackendOptions) -> str:
    # Verifies the files (re-hashing those whose stamp changed): a corrupt export
    # fails here, before serving.
    from stageflow.inference.onnx.layout import read_manifest

    return read_manifest(folder, verify=True, digests=options.digests).fingerprint


def _export_dtype(folder: Path) -> str:
    from stageflow.inference.onnx.layout import read_manifest

    return read_manifest(folder, verify=False).dtype


# --- tensorrt -------------------------------------------------------------------------


def _trt_diffusion(folder: Path, options: BackendOptions) -> DiffusionParts:
    from stageflow.inference.tensorrt.runtime import load_trt_parts

    return load_trt_parts(folder, options.device, cache_dir=options.engine_cache)


def _trt_upscaler(folder: Path, options: BackendOptions) -> tuple[UpscaleNet, int]:
    from stageflow.inference.tensorrt.runtime import load_trt_upscaler

    return load_trt_upscaler(folder, options.device, cache_dir=options.engine_cache)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "torch",
            _torch_diffusion,
            _torch_upscaler,
            _folder_fingerprint,
            takes_graph_options=True,
        ),
        Backend(
            "onnxruntime",
            _ort_diffusion,
            _ort_upscaler,
            _export_fingerprint,
            takes_providers=True,
            requires="onnxruntime",
            exported_dtype=_export_dtype,
        ),
        Backend(
            "tensorrt",
            _trt_diffusion,
            _trt_upscaler,
            _export_fingerprint,
            requires="tensorrt",
            exported_dtype=_export_dtype,
        ),
    )
}


def backend(name: str, providers: Sequence[str] = ()) -> Backend:
    """The backend called `name`; ValueError for an unknown one, or for
    providers given to a backend that has none (cheap: imports nothing)."""
    try:
        found = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}"
        ) from None
    if providers and not found.takes_providers:
        raise ValueError(
            f"backend {name!r} takes no execution providers (got {list(providers)}); "
            "providers apply to the onnxruntime backend"
        )
    return found


def require_runtime(found: Backend) -> None:
    """Raise BackendUnavailable when the backend's library is not installed."""
    if found.requires and importlib.util.find_spec(found.requires) is None:
        raise BackendUnavailable(
            f"backend {found.name!r} needs the {found.requires!r} Python package, which is "
            "not installed in this environment"
            + (
                " (TensorRT comes with NVIDIA's wheels or containers; export to ONNX and use "
                "the onnxruntime backend where it is absent)"
                if found.name == "tensorrt"
                else ""
            )
        )
