"""What every model in this package shares: construction, identity, threads.

Every StageModel here takes the same constructor arguments so the registry
and the stage processes can build any family the same way.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from stageflow.core.errors import Cancelled, FailedPrecondition
from stageflow.core.logging import get_logger
from stageflow.inference import backends, compiled, hardware, precision
from stageflow.inference.digests import NO_CACHE, DigestCache
from stageflow.inference.interface import CancelledFn, ModelIdentity, StageModel
from stageflow.inference.vae_tiling import VaeTiling

log = get_logger(__name__)


def folder_fingerprint(folder: Path, digests: DigestCache = NO_CACHE) -> str:
    """sha256 over (relative path, file digest) of every file, in path order.

    Any changed, added, removed or renamed file changes it, so the stage
    cache never reuses an output made by other weights. A top-level
    model.yaml is left out: it describes the files (as a repository version's
    does, which the repository's fingerprint leaves out too). `digests`
    skips re-hashing files whose stamp has not changed since the last start.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / "model.yaml")
    rels = [p.relative_to(folder).as_posix() for p in files]
    known = digests.digests(folder, rels)
    outer = hashlib.sha256()
    for rel in rels:
        outer.update(rel.encode())
        outer.update(b"\0")
        outer.update(bytes.fromhex(known[rel]))
    return outer.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weight_bytes(folder: Path) -> int:
    """The bytes of weight files under `folder` (what dtype=auto weighs)."""
    return sum(
        p.stat().st_size for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()
    )


def check_cancelled(cancelled: CancelledFn, done: int, total: int) -> None:
    if cancelled():
        raise Cancelled(f"cancelled at step {done} of {total}")


class LocalModel(StageModel, abc.ABC):
    """A StageModel whose weights live in one local folder."""

    # Whether the model has eager torch UNet and VAE modules when served by torch
    # (the diffusion families), which compile and channels_last act on.
    graph_parts: ClassVar[bool] = False
    # The precisions the torch backend's dtype=auto may cast this model's parts to,
    # and where it takes bf16.
    torch_dtypes: ClassVar[tuple[str, ...]] = precision.DTYPES
    auto_bf16: ClassVar[hardware.AutoBf16] = hardware.AutoBf16()

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        version: str = "1",
        device: str = "cpu",
        torch_threads: int = 0,
        max_side: int = 1024,
        backend: str = "torch",
        providers: Sequence[str] = (),
        engine_cache: Path | None = None,
        dtype: str = precision.DEFAULT_DTYPE,
        digest_cache: Path | None = None,
        vae_tiling: VaeTiling | None = None,
        warmup: bool = False,
        compile: str = compiled.OFF,
        channels_last: bool | str = False,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.version = version
        self.device = device
        self.torch_threads = torch_threads
        self.max_side = max_side
        # Checked here, not at load: a typo in a backend name fails at start-up.
        self.runtime = backends.backend(backend, providers)
        self.backend = backend
        self.providers = tuple(providers)
        self.engine_cache = engine_cache
        # The setting (fp32, fp16, bf16 or auto); what it resolves to is chosen at load.
        self.dtype = precision.check_setting(dtype)
        self._choice: precision.DtypeChoice | None = None
        self.digests = DigestCache(digest_cache)
        # When the VAE decodes in tiles (diffusion models; others ignore it).
        self.vae_tiling = vae_tiling or VaeTiling()
        # Run the model once at load, so the first request after SERVING is not slow.
        self.warmup = warmup
        # torch.compile of the UNet and VAE decode, and their memory format
        # (stageflow.inference.compiled); checked against the backend at load.
        self.compile = compiled.check_mode(compile)
        # on, off or auto; whether this load runs in channels_last is chosen at load.
        self.channels_last = compiled.check_layout(channels_last)
        self._layout: tuple[bool, str] | None = None
        self._weight_size: int | None = None
        self._identity: ModelIdentity | None = None

    @property
    def backend_options(self) -> backends.BackendOptions:
        return backends.BackendOptions(
            self.device,
            self.providers,
            self.torch_threads,
            self.engine_cache,
            dtype=self._choice.dtype if self._choice else self.dtype,
            digests=self.digests,
            compile=self.compile,
            channels_last=self._layout[0] if self._layout else False,
        )

    @property
    def loaded(self) -> bool:
        return self._identity is not None

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            raise FailedPrecondition(f"model {self.name} is not loaded")
        return self._identity

    def load(self) -> None:
        if not self.path.is_dir():
            raise FileNotFoundError(f"model folder {self.path} does not exist")
        if self.torch_threads > 0:
            import torch

            # Process-wide: one stage process serves one model.
            torch.set_num_threads(self.torch_threads)
        backends.require_runtime(self.runtime)
        self._check_graph_options()
        # Before the weights: a compiled folder's files are verified against its manifest.
        fingerprint = self.runtime.fingerprint(self.path, self.backend_options)
        self._choice = choice = self._choose_dtype()
        dtype = choice.dtype
        self._layout = channels_last, layout_reason = self._choose_layout(dtype)
        self._load_weights()
        if self.warmup:
            self._warm_up()
        self._identity = ModelIdentity(
            name=self.name,
            version=self.version,
            backend=self.backend,
            # A compiled folder's fingerprint already covers its export's dtype.
            fingerprint=fingerprint
            if self.runtime.fixed_dtype
            else precision.with_dtype(fingerprint, dtype),
            dtype=dtype,
            dtype_setting=choice.setting,
            dtype_reason=choice.reason,
            cpu_features=choice.cpu_features,
            cpu_capability=choice.cpu_capability,
            compile=self.compile,
            channels_last=channels_last,
        )
        log.info(
            "model loaded",
            model=self.name,
            version=self.version,
            backend=self.backend,
            providers=list(self.providers),
            dtype=dtype,
            dtype_reason=choice.reason,
            compile=self.compile,
            channels_last=channels_last,
            channels_last_reason=layout_reason,
            fingerprint=self._identity.fingerprint[:12],
        )

    def _choose_layout(self, dtype: str) -> tuple[bool, str]:
        """Whether this load runs in channels_last, and why (`dtype`: the resolved one)."""
        return compiled.choose_channels_last(
            self.channels_last,
            self.graph_parts and self.runtime.takes_graph_options,
            self._weights_bytes() if self.channels_last == compiled.AUTO else None,
        )

    def _weights_bytes(self) -> int:
        """The folder's weight bytes, walked once per model (what the autos weigh)."""
        if self._weight_size is None:
            self._weight_size = weight_bytes(self.path)
        return self._weight_size

    def _choose_dtype(self) -> precision.DtypeChoice:
        """The precision this load runs in and why: for backends that cast at load,
        the setting (auto: by the CPU's bf16 flags); for compiled ones the export's
        own (another explicit setting is refused)."""
        if not self.runtime.fixed_dtype:
            cpu = hardware.detect() if self.device.startswith("cpu") else hardware.CpuBf16((), "")
            # Only auto weighs the folder: a set dtype walks no files.
            size = self._weights_bytes() if self.dtype == precision.AUTO else None
            return hardware.choose_cast_dtype(
                self.dtype, cpu, self.device, self.torch_dtypes, size, self.auto_bf16
            )
        try:
            return precision.exported_choice(
                self.dtype, self.runtime.dtype_of(self.path), self.path
            )
        except ValueError as err:
            raise FailedPrecondition(str(err)) from None

    def _check_graph_options(self) -> None:
        """compile and channels_last apply to eager torch modules; an exported
        graph (onnxruntime, tensorrt) is compiled already: refused, not ignored."""
        if self.runtime.takes_graph_options:
            return
        if self.compile != compiled.OFF:
            raise FailedPrecondition(
                f"compile {self.compile}: the {self.backend} backend serves an exported "
                "graph, compiled already; compile applies to the torch backend (set it off)"
            )
        if self.channels_last == compiled.ON:
            raise FailedPrecondition(
                f"channels_last: the {self.backend} backend serves an exported graph, whose "
                "memory format is its own; channels_last applies to the torch backend"
            )

    def _warm_up(self) -> None:
        """One call through the loaded parts at the served size (subclasses)."""

    def unload(self) -> None:
        self._release_weights()
        self._identity = None

    @abc.abstractmethod
    def _load_weights(self) -> None: ...

    @abc.abstractmethod
    def _release_weights(self) -> None: ...
