"""Stage models from the model repository: resolve, check, materialize, load.

A stage knows its kind (txt2img, ...) and which family serves it from each
model.yaml format (both from the kind's declaration in stageflow.kinds, handed
in by the stage process); the version's model.yaml gives its format and
backend; together they pick the registry family. What the
stage then reports (Describe, every result) is the version's identity from
model.yaml: name, version, backend and fingerprint.

No torch here: the model factory (the registry's `create_model`) is passed in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stageflow.core.errors import FailedPrecondition, StageflowError
from stageflow.core.logging import get_logger
from stageflow.inference import precision
from stageflow.inference.interface import (
    CancelledFn,
    ModelDescription,
    ModelIdentity,
    ProgressFn,
    StageInputs,
    StageModel,
    StageOutput,
    StageParams,
    Txt2ImgParams,
    check_side,
)
from stageflow.inference.repository import (
    Backend,
    ModelRepository,
    ModelVersion,
    parse_ref,
)

log = get_logger(__name__)

ModelFactory = Callable[..., StageModel]

# Architectures that import (so they can be listed and compiled later) but that
# our denoise loop does not drive yet: refused at load with the reason.
UNSUPPORTED: Mapping[str, str] = {
    "sdxl-inpaint": "SDXL inpainting pipelines are not supported",
    "sd-inpaint": "inpainting-specific UNets (9 input channels) are not supported; the refine "
    "stage inpaints with a plain SD model",
}


class RepositoryModel(StageModel):
    """A loaded model that reports its repository version's identity and sizes.

    The precision it runs in comes from the loaded model; a torch version served
    in fp16/bf16 folds it into the version's fingerprint (as a folder loaded by
    path does), a compiled version's fingerprint already covers its export's."""

    def __init__(
        self, inner: StageModel, version: ModelVersion, loaded: ModelIdentity | None = None
    ) -> None:
        self.inner = inner
        self.version = version
        compiled = version.backend != Backend.TORCH
        # The loaded model's precision and why (dtype_setting, dtype_reason, CPU
        # features) under the version's name and fingerprint.
        loaded = loaded or ModelIdentity("", "", "", "")
        self.identity = dataclasses.replace(
            loaded,
            name=version.name,
            version=version.version,
            backend=str(version.backend),
            fingerprint=version.fingerprint
            if compiled
            else precision.with_dtype(version.fingerprint, loaded.dtype),
        )

    def __getattr__(self, name: str) -> Any:
        # kind, params_type and anything else a caller asks the model itself.
        return getattr(self.inner, name)

    def load(self) -> None:
        self.inner.load()

    def describe(self) -> ModelDescription:
        own = self.inner.describe()
        sizes = self.version.sizes
        multiple = (
            own.size_multiple
            * sizes.size_multiple
            // math.gcd(own.size_multiple, sizes.size_multiple)
        )
        return dataclasses.replace(
            own,
            identity=self.identity,
            min_side=max(own.min_side, sizes.min_side),
            max_side=min(own.max_side, sizes.max_side),
            size_multiple=multiple,
            # model.yaml's over the model's own.
            param_defaults={**own.param_defaults, **self.version.defaults.get(own.kind, {})},
            **_domain_fields(self.version),
        )

    def validate(self, params: StageParams) -> None:
        self.inner.validate(params)
        if isinstance(params, Txt2ImgParams):
            desc = self.describe()
            check_side("width", params.width, desc)
            check_side("height", params.height, desc)

    def validate_inputs(self, params: StageParams, inputs: StageInputs) -> None:
        self.inner.validate_inputs(params, inputs)

    def run(
        self, params: StageParams, inputs: StageInputs, progress: ProgressFn, cancelled: CancelledFn
    ) -> Any:
        return self.inner.run(params, inputs, progress, cancelled)

    def run_with_report(
        self, params: StageParams, inputs: StageInputs, progress: ProgressFn, cancelled: CancelledFn
    ) -> StageOutput:
        return self.inner.run_with_report(params, inputs, progress, cancelled)

    def unload(self) -> None:
        self.inner.unload()


def _loaded_identity(model: StageModel) -> ModelIdentity | None:
    """What a loaded model reports of itself (None for models that report nothing)."""
    identity = getattr(model, "identity", None)
    return identity if isinstance(identity, ModelIdentity) else None


def _domain_fields(version: ModelVersion) -> dict[str, Any]:
    """The version's declared prompt domain, over what its files say."""
    domain = version.prompt_domain
    if domain is None:
        return {}
    return {"vocabulary": tuple(domain.vocabulary), "domain_description": domain.description}


class RepositoryLoader:
    """Loads `name@version` for one stage kind; `load` blocks (run it in a thread).

    `families` maps a model.yaml format to the registry family that serves this
    kind from it (the backend is passed apart)."""

    def __init__(
        self,
        repository: ModelRepository,
        kind: str,
        create_model: ModelFactory,
        *,
        families: Mapping[str, str],
        device: str = "cpu",
        torch_threads: int = 0,
        max_side: int = 1024,
        providers: Sequence[str] = (),
        engine_cache: Path | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.repository = repository
        self.kind = kind
        self._families = dict(families)
        self._create = create_model
        self._device = device
        self._torch_threads = torch_threads
        self._max_side = max_side
        self._providers = tuple(providers)
        self._engine_cache = engine_cache
        # Passed to every model's constructor as they are: dtype, digest_cache,
        # vae_tiling, warmup, compile, channels_last (stageflow.inference.base.LocalModel).
        self._options = dict(model_options or {})

    def resolve(self, ref: str) -> tuple[ModelVersion, str]:
        """The version `ref` names and the family that serves it on this stage,
        or a clear error before anything is downloaded or loaded."""
        name, version = parse_ref(ref)
        found = self.repository.get(name, version)
        if self.kind not in found.kinds:
            served = ", ".join(str(k) for k in found.kinds)
            raise FailedPrecondition(
                f"model {found.ref} serves {served}; this stage runs {self.kind}"
            )
        if found.architecture in UNSUPPORTED:
            raise FailedPrecondition(f"model {found.ref}: {UNSUPPORTED[found.architecture]}")
        family = self._families.get(str(found.format))
        if family is None:
            raise FailedPrecondition(
                f"model {found.ref}: no {self.kind} model family for format {found.format}"
            )
        return found, family

    def load(self, ref: str) -> RepositoryModel:
        found, family = self.resolve(ref)
        folder = self.repository.materialize(found.name, found.version)
        log.info("model.loading", model=found.ref, family=family, backend=str(found.backend))
        try:
            model = self._create(family, Path(folder), **self._model_kwargs(found))
            model.load()
        except StageflowError:
            raise
        except Exception as e:
            # Corrupt weights, a missing part, an unknown backend: one clear line.
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise FailedPrecondition(
                f"cannot load model {found.ref} from {folder}: {type(e).__name__}: {detail}"
            ) from e
        return RepositoryModel(model, found, _loaded_identity(model))

    def _model_kwargs(self, found: ModelVersion) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "name": found.name,
            "version": found.version,
            "device": self._device,
            "torch_threads": self._torch_threads,
            "max_side": min(self._max_side, found.sizes.max_side),
            **self._options,
        }
        # Only for compiled versions: the torch constructors take no backend.
        if found.backend != Backend.TORCH:
            kwargs["backend"] = str(found.backend)
            kwargs["providers"] = self._providers
            kwargs["engine_cache"] = self._engine_cache
        return kwargs
