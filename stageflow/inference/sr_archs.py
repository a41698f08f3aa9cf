"""Upscaler architectures by name: a new one is one module plus one line here.

An upscaler folder is `config.json` (whose `architecture` names an entry here;
absent means RRDBNet, the first one) + `model.safetensors` with Real-ESRGAN's
parameter names. Each architecture's module provides

    Config                       a frozen dataclass with at least `scale`
    build(config) -> nn.Module   the network, randomly initialised
    receptive_radius(config)     input pixels each side that reach one output pixel
    from_ncnn(graph)             (config, state dict of numpy arrays) from an ncnn model,
                                 or NcnnFormatError saying why the graph is not this one

This module imports no torch (the model repository reads it to recognise a
folder); the architecture modules are imported when a folder is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from stageflow.inference.ncnn import NcnnGraph

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Where an imported model came from (the ncnn files' digests, its origin and licence).
SOURCE_FILE = "source.json"


class ArchModule(Protocol):
    ARCHITECTURE: str
    Config: type[Any]

    def build(self, config: Any) -> nn.Module: ...
    def receptive_radius(self, config: Any) -> int: ...
    def from_ncnn(self, graph: NcnnGraph) -> tuple[Any, dict[str, np.ndarray]]: ...


@dataclass(frozen=True)
class Architecture:
    name: str  # config.json's "architecture"
    module: str  # the module implementing ArchModule
    marker: str  # a config key only this architecture's config.json has
    short: str  # model.yaml's architecture: "<short>-x<scale>"

    def load_module(self) -> ArchModule:
        module: ArchModule = importlib.import_module(self.module)
        return module


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("RRDBNet", "stageflow.inference.rrdbnet", "num_block", "rrdbnet"),
        Architecture("SRVGGNetCompact", "stageflow.inference.srvgg", "num_conv", "srvgg"),
    )
}
DEFAULT_ARCHITECTURE = "RRDBNet"


def architecture_of(raw: dict[str, Any]) -> Architecture | None:
    """The architecture a parsed config.json declares, or None if it is not an upscaler's."""
    found = ARCHITECTURES.get(str(raw.get("architecture", DEFAULT_ARCHITECTURE)))
    if found is None or found.marker not in raw:
        return None
    return found


def read_config(folder: Path) -> tuple[Architecture, Any]:
    path = Path(folder) / CONFIG_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    arch = architecture_of(raw) if isinstance(raw, dict) else None
    if arch is None:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"{path}: not an upscaler config (architectures: {known})")
    config_type = arch.load_module().Config
    names = {f.name for f in dataclasses.fields(config_type)}
    return arch, config_type(**{k: v for k, v in raw.items() if k in names})


def write_config(folder: Path, architecture: str, config: Any) -> None:
    body = {"architecture": architecture, **dataclasses.asdict(config)}
    (folder / CONFIG_FILE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def load_upscaler(folder: Path) -> tuple[nn.Module, Any]:
    """The network of an upscaler folder in eval mode, float32, and its config."""
    import torch

    arch, config = read_config(folder)
    net = arch.load_module().build(config)
    # strict: a renamed or missing parameter must fail loudly, not run random.
    # load_state_dict copies into the float32 parameters: fp16 files upcast here.
    state = read_state_dict(Path(folder))
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    return net.eval(), config


def read_state_dict(folder: Path) -> dict[str, Any]:
    """model.safetensors, or else the first *.pth (Real-ESRGAN release layout)."""
    weights = folder / WEIGHTS_FILE
    if weights.exists():
        from safetensors.torch import load_file

        return dict(load_file(str(weights)))
    pths = sorted(folder.glob("*.pth"))
    if not pths:
        raise FileNotFoundError(f"{folder}: neither {WEIGHTS_FILE} nor a *.pth file")
    import torch

    state = torch.load(pths[0], map_location="cpu", weights_only=True)
    for key in ("params_ema", "params"):
        if key in state:
            state = state[key]
            break
    return dict(state)


def receptive_radius(folder: Path) -> int:
    arch, config = read_config(folder)
    return arch.load_module().receptive_radius(config)


# -- ncnn import ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_ncnn(
    param: Path, weights: Path, out: Path, *, origin: str = "", licence: str = ""
) -> tuple[Architecture, Any]:
    """Write an upscaler folder (config.json, model.safetensors, source.json) into
    `out` from an ncnn `.param`/`.bin` pair, whichever architecture it matches.

    Weights keep the dtype they were stored in (fp16 convolutions, float32
    biases and slopes), so the folder holds exactly the values ncnn runs.
    """
    import numpy as np
    from safetensors.numpy import save_file

    from stageflow.inference.ncnn import NcnnFormatError, read_ncnn

    graph = read_ncnn(param, weights)
    reasons = []
    for arch in ARCHITECTURES.values():
        try:
            config, state = arch.load_module().from_ncnn(graph)
        except NcnnFormatError as err:
            reasons.append(f"not {arch.name}: {err}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, arch.name, config)
        save_file(
            {k: np.ascontiguousarray(v) for k, v in state.items()},
            str(out / WEIGHTS_FILE),
            metadata={"format": "pt"},
        )
        source = {
            "format": "ncnn",
            "param": Path(param).name,
            "param_sha256": _sha256(Path(param)),
            "bin": Path(weights).name,
            "bin_sha256": _sha256(Path(weights)),
            "origin": origin,
            "licence": licence,
        }
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        return arch, config
    raise NcnnFormatError(f"{param}: matches no upscaler architecture: " + "; ".join(reasons))
