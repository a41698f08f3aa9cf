"""Model families by name: a new model is one class plus one line here.

Families are listed as import paths so `import stageflow.inference.registry` stays
cheap (no torch, no diffusers); a family's module is imported when it is
first used. `MODEL_FAMILIES` resolves them all on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stageflow.inference.interface import StageModel

FAMILY_PATHS: dict[str, str] = {
    "sd-txt2img": "stageflow.inference.diffusion:Txt2ImgModel",
    "sd-refine": "stageflow.inference.diffusion:RefineModel",
    "esrgan": "stageflow.inference.upscaler:EsrganUpscaler",
}


def register_family(family: str, target: str) -> None:
    """Add a family ("module:Class"), e.g. one a stage kind declared outside
    stageflow brings (stageflow.kinds `family_classes`); the same name twice
    must name the same class."""
    known = FAMILY_PATHS.get(family)
    if known is not None and known != target:
        raise ValueError(f"model family {family!r} is already {known}, not {target}")
    if ":" not in target:
        raise ValueError(f"model family {family!r}: expected module:Class, got {target!r}")
    FAMILY_PATHS[family] = target


def families() -> list[str]:
    return sorted(FAMILY_PATHS)


def model_class(family: str) -> type[StageModel]:
    try:
        target = FAMILY_PATHS[family]
    except KeyError:
        raise ValueError(
            f"unknown model family {family!r}; known families: {', '.join(families())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls: type[StageModel] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_model(
    family: str,
    path: Path,
    *,
    backend: str = "torch",
    providers: Sequence[str] = (),
    **kwargs: Any,
) -> StageModel:
    """Construct (not load) a model of `family` from its folder.

    `backend` names an entry of `stageflow.inference.backends.BACKENDS` ("torch",
    "onnxruntime" over an `export_onnx` folder, "tensorrt"); `providers` are
    onnxruntime execution providers ("cpu", "cuda", "tensorrt" or full names).
    Other kwargs are the shared constructor's: name, version, device,
    torch_threads, max_side, engine_cache (where tensorrt caches its engines).
    An unknown backend, or providers for a backend without them, raise
    ValueError here; a missing runtime or provider raises FailedPrecondition
    at load().
    """
    cls = model_class(family)
    return cls(Path(path), backend=backend, providers=providers, **kwargs)  # type: ignore[call-arg]


def __getattr__(name: str) -> dict[str, type[StageModel]]:
    # PEP 562: MODEL_FAMILIES is built on first access, importing torch then.
    if name == "MODEL_FAMILIES":
        return {family: model_class(family) for family in FAMILY_PATHS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
