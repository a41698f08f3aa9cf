"""A versioned model repository, laid out like Triton's.

    <root>/<model>/<version>/model.yaml   what the version is (ModelVersion)
    <root>/<model>/<version>/<files...>   its files, as the loader reads them

The root is a local folder or an S3 prefix
(``s3://bucket/prefix?endpoint=http://host:port``; keys from the arguments).
A version becomes visible when its model.yaml is written, which happens
last, so a reader never sees a half-uploaded version.

model.yaml records the sha256 and size of every file and a fingerprint over
them (for compiled versions: the exporter's, which covers export settings).
`materialize` returns a local folder with exactly those bytes: the version
folder itself for a local root, else a download cache keyed by
model/version/fingerprint. Both are verified file by file on every call, so a
corrupted cache is replaced and a corrupted upload is reported (DATA_LOSS).

Versions: "latest" is the greatest version in natural order (digit runs
compare as numbers: 2 < 10, "1" < "1-onnx" < "2"). `compile` writes a new
version named after its source and settings: 1 -> "1-onnx", "1-onnx-fp16",
"1-tensorrt", so where it came from is visible in the name.

This module knows no gRPC and imports no torch.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import hashlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stageflow.core.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore, check_key, open_location, parse_store_url
from stageflow.inference import precision
from stageflow.inference.digests import NO_CACHE, DigestCache
from stageflow.inference.interface import StageKind, params_type_of
from stageflow.inference.prompt_domain import PromptDomain, read_folder_domain
from stageflow.inference.sr_archs import architecture_of

log = get_logger(__name__)

MANIFEST = "model.yaml"
LATEST = "latest"
# Where an S3 repository's versions are downloaded when the caller names no folder.
DEFAULT_CACHE = "var/model-cache"
# Names and versions become key segments and folder names: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256 = r"^[0-9a-f]{64}$"


class ModelFormat(enum.StrEnum):
    DIFFUSERS = "diffusers"  # a diffusers Stable Diffusion folder (torch weights)
    # an upscaler folder (sr_archs: RRDBNet, SRVGGNetCompact; config.json + weights)
    ESRGAN = "esrgan"
    ONNX = "onnx"  # compiled by `compile` from one of the above


class Backend(enum.StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


# `compile --backend X`: the backend the compiled version runs on.
COMPILE_BACKENDS: Mapping[str, Backend] = {
    "onnx": Backend.ONNXRUNTIME,
    "tensorrt": Backend.TENSORRT,
}


class InvalidManifest(FailedPrecondition):
    """A model.yaml that does not parse or validate; the message names the field."""


def check_name(value: str, field: str) -> str:
    if value == LATEST and field == "version":
        return value
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            field,
            f"must be letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"at most 100 characters; got {value!r}",
        )
    return value


def parse_ref(ref: str, field: str = "model") -> tuple[str, str]:
    """ "name@version" -> (name, version); a bare "name" means its latest version."""
    name, at, version = ref.strip().partition("@")
    if not _NAME.fullmatch(name) or (at and not _NAME.fullmatch(version)):
        raise InvalidArgument(
            field,
            f"must be name@version or name, each letters, digits, '.', '_' or '-'; got {ref!r}",
        )
    return name, version or LATEST


def version_order(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: digit runs compare as numbers."""
    return tuple(
        (0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk)
        for chunk in re.split(r"(\d+)", version)
        if chunk
    )


def defaultable_params(kind: str) -> dict[str, dataclasses.Field[Any]]:
    """Parameters a model.yaml may give defaults for: the numeric ones."""
    return {
        f.name: f
        for f in dataclasses.fields(params_type_of(kind))
        if f.type in ("int", "float", int, float) or "range" in f.metadata
    }


# -- model.yaml ---------------------------------------------------------------


class Sizes(BaseModel):
    """Accepted image sides in pixels (output for txt2img, input otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_side: int = Field(ge=1)
    max_side: int = Field(ge=1)
    size_multiple: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Sizes:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) exceeds max_side ({self.max_side})")
        return self


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)


def _known_kind(kind: str) -> str:
    params_type_of(kind)  # ValueError naming the known kinds
    return str(kind)


class ModelVersion(BaseModel):
    """One version of a model: the contents of its model.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_version: int = Field(default=1, ge=1, le=1, description="model.yaml schema version.")
    name: str = Field(pattern=_NAME.pattern)
    version: str = Field(pattern=_NAME.pattern)
    kinds: list[Annotated[str, AfterValidator(_known_kind)]] = Field(
        min_length=1, description="Stage kinds it serves."
    )
    format: ModelFormat
    architecture: str = Field(default="", description="e.g. sd, sdxl, rrdbnet-x4.")
    backend: Backend
    sizes: Sizes
    defaults: dict[str, dict[str, int | float]] = Field(
        default_factory=dict,
        description="Parameter defaults per stage kind, over the model class's own.",
    )
    fingerprint: str = Field(pattern=_SHA256)
    files: dict[str, FileEntry] = Field(min_length=1)
    source: str | None = Field(default=None, description="name@version it was compiled from.")
    export: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Export settings of a compiled version."
    )
    created_at: datetime
    prompt_domain: PromptDomain | None = Field(
        default=None, description="What its prompts may say (a warning names other words)."
    )

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @field_validator("kinds")
    @classmethod
    def _unique_kinds(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"lists a kind twice: {[str(k) for k in kinds]}")
        return [str(k) for k in kinds]

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for path in files:
            try:
                check_key(path, field="files")
            except InvalidArgument as e:
                raise ValueError(e.message) from None
            if path == MANIFEST:
                raise ValueError(f"must not list {MANIFEST} itself")
        return files

    @field_validator("source")
    @classmethod
    def _source_ref(cls, source: str | None) -> str | None:
        if source is not None:
            name, at, version = source.partition("@")
            if not (at and _NAME.fullmatch(name) and _NAME.fullmatch(version)):
                raise ValueError(f"must be name@version, got {source!r}")
        return source

    @field_validator("defaults")
    @classmethod
    def _plain_kinds(
        cls, defaults: dict[str, dict[str, int | float]]
    ) -> dict[str, dict[str, int | float]]:
        return {str(kind): values for kind, values in defaults.items()}

    @model_validator(mode="after")
    def _defaults_fit(self) -> ModelVersion:
        for kind, values in self.defaults.items():
            if kind not in self.kinds:
                raise ValueError(f"defaults.{kind}: the model does not serve {kind}")
            known = defaultable_params(kind)
            for key, value in values.items():
                where = f"defaults.{kind}.{key}"
                if key not in known:
                    raise ValueError(f"{where}: unknown parameter; known: {', '.join(known)}")
                f = known[key]
                if f.type in ("int", int) and value != int(value):
                    raise ValueError(f"{where}: must be a whole number, got {value:g}")
                lo, hi = f.metadata.get("range", (self.sizes.min_side, self.sizes.max_side))
                if not lo <= value <= hi:
                    raise ValueError(f"{where}: must be in [{lo:g}, {hi:g}], got {value:g}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_manifest(text: str | bytes, where: str) -> ModelVersion:
    """Parse and validate a model.yaml; errors name `where` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidManifest(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InvalidManifest(f"{where}: must be a mapping of fields, got {type(data).__name__}")
    try:
        return ModelVersion.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise InvalidManifest(f"{where}: " + "; ".join(problems)) from None


# -- files and fingerprints ------------------------------------------------------


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint_of(digests: Mapping[str, str]) -> str:
    """sha256 over (relative path, file digest) in path order: the same value
    `stageflow.inference.base.folder_fingerprint` gives the folder, so a version loaded
    from the repository and the same folder loaded by path report one identity."""
    outer = hashlib.sha256()
    for rel in sorted(digests, key=lambda r: tuple(r.split("/"))):
        outer.update(rel.encode())
        outer.update(b"\0")
        outer.update(bytes.fromhex(digests[rel]))
    return outer.hexdigest()


def folder_files(folder: Path) -> dict[str, FileEntry]:
    """Every file below `folder` (following links) but hidden ones and model.yaml."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == MANIFEST:
            continue
        if path.is_file():
            entries[rel.as_posix()] = FileEntry(sha256=file_sha256(path), size=path.stat().st_size)
    return entries


def link_tree(src: Path, dst: Path) -> Path:
    """`dst`: `src`'s folders, with a symbolic link to each of its files."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    dst.mkdir(parents=True, exist_ok=True)
    return dst


def _write_variant(folder: Path, dtype: str) -> None:
    from stageflow.inference.variants import write_variant

    try:
        write_variant(folder, dtype)
    except ValueError as e:
        raise InvalidArgument("variant", str(e)) from None


def check_files(version: ModelVersion, folder: Path, digests: DigestCache = NO_CACHE) -> list[str]:
    """What differs between `folder` and the files model.yaml records (files
    whose stamp `digests` has seen unchanged are not re-hashed)."""
    problems, sized = [], []
    for rel, entry in version.files.items():
        path = folder.joinpath(*rel.split("/"))
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, model.yaml records {entry.size}")
        else:
            sized.append(rel)
    actual = digests.digests(folder, sized)
    for rel in sized:
        if actual[rel] != version.files[rel].sha256:
            problems.append(
                f"{rel}: sha256 {actual[rel]}, model.yaml records {version.files[rel].sha256}"
            )
    return problems


# -- what a source folder is ---------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    format: ModelFormat
    architecture: str
    kinds: list[str]
    sizes: Sizes
    defaults: dict[str, dict[str, int | float]]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidArgument("src", f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("src", f"{path} is not a JSON object")
    return data


def _diffusers_sides(unet: Mapping[str, Any], vae: Mapping[str, Any]) -> tuple[int, int]:
    """(size multiple, native side) of a diffusers folder from its UNet and VAE
    configs: latents halve cleanly at every UNet level, and the UNet's
    sample_size in pixels is the size it was trained at."""
    vae_scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    multiple = vae_scale * 2 ** (len(unet.get("block_out_channels", [0])) - 1)
    sample = unet.get("sample_size", 64)
    native = int(max(sample) if isinstance(sample, list) else sample) * vae_scale
    return multiple, max(multiple, native // multiple * multiple)


def native_side(folder: Path) -> int | None:
    """The side a diffusers folder's UNet was trained at (its txt2img default
    width and height), from its two configs, or from an ONNX export's manifest
    (`native_side`, recorded at export); None when neither says."""
    unet, vae = folder / "unet" / "config.json", folder / "vae" / "config.json"
    if not (unet.is_file() and vae.is_file()):
        manifest = folder / "onnx_model.json"  # stageflow.inference.onnx.layout.MANIFEST
        if not manifest.is_file():
            return None
        side = _read_json(manifest).get("config", {}).get("native_side")
        return int(side) if side else None
    return _diffusers_sides(_read_json(unet), _read_json(vae))[1]


def _detect_diffusers(src: Path) -> Detected | None:
    if not (src / "model_index.json").is_file():
        return None
    index = _read_json(src / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    unet = _read_json(src / "unet" / "config.json")
    vae = _read_json(src / "vae" / "config.json")
    xl = "text_encoder_2" in index or "XL" in pipeline
    kinds: list[str] = [StageKind.TXT2IMG, StageKind.REFINE]
    # The SDXL refiner lists its absent first encoder as "text_encoder": [null, null].
    first_encoder = (index.get("text_encoder") or [None])[0]
    if "Inpaint" in pipeline or ("Img2Img" in pipeline and first_encoder is None):
        kinds = [StageKind.REFINE]  # inpainting UNets and the SDXL refiner start from an image
    architecture = "sdxl" if xl else "sd"
    if int(unet.get("in_channels", 4)) != int(vae.get("latent_channels", 4)):
        architecture += "-inpaint"
    multiple, native = _diffusers_sides(unet, vae)
    max_side = max(1024, 2 * native) // multiple * multiple
    # What this folder says about itself: its native size. Steps, guidance and
    # strength stay the model class's defaults (one owner each).
    defaults: dict[str, dict[str, int | float]] = {
        StageKind.TXT2IMG: {"width": native, "height": native},
    }
    return Detected(
        format=ModelFormat.DIFFUSERS,
        architecture=architecture,
        kinds=kinds,
        sizes=Sizes(min_side=multiple, max_side=max_side, size_multiple=multiple),
        defaults={k: v for k, v in defaults.items() if k in kinds},
    )


def _detect_esrgan(src: Path) -> Detected | None:
    config = src / "config.json"
    if not config.is_file():
        return None
    raw = _read_json(config)
    arch = architecture_of(raw)
    if arch is None:
        return None
    has_weights = (src / "model.safetensors").is_file() or any(src.glob("*.pth"))
    if not has_weights:
        raise InvalidArgument(
            "src", f"{src}: an {arch.name} config but no model.safetensors or *.pth"
        )
    return Detected(
        format=ModelFormat.ESRGAN,
        architecture=f"{arch.short}-x{raw.get('scale', 4)}",
        kinds=[StageKind.UPSCALE],
        sizes=Sizes(min_side=1, max_side=1024, size_multiple=1),
        defaults={},
    )


# A new source format is one function here.
DETECTORS: list[Callable[[Path], Detected | None]] = [_detect_diffusers, _detect_esrgan]


def detect_folder(src: Path) -> Detected:
    if not src.is_dir():
        raise InvalidArgument("src", f"{src} is not a folder")
    for detector in DETECTORS:
        found = detector(src)
        if found is not None:
            return found
    raise InvalidArgument(
        "src",
        f"{src} is neither a diffusers Stable Diffusion folder (model_index.json) "
        "nor an upscaler folder (config.json for RRDBNet or SRVGGNetCompact + weights)",
    )


# -- compile ----------------------------------------------------------------------


class ExportResult(Protocol):
    fingerprint: str


class Exporter(Protocol):
    def __call__(self, src: Path, dst: Path, *, fp16: bool = ..., opset: int = ...) -> Any: ...


def compiled_version(version: str, backend: str, dtype: str) -> str:
    """ "1" -> "1-onnx", "1-onnx-fp16": the precision shows in the name."""
    return f"{version}-{backend}" + ("" if dtype == precision.FP32 else f"-{dtype}")


# A step of a long repository operation, for its caller to show ("exporting ...").
StepFn = Callable[[str], None]


def _no_step(_message: str) -> None:
    return None


def _onnx_exporter() -> Exporter:
    # Imported on use: the exporter pulls in torch and onnx.
    from stageflow.inference.onnx.export import export_onnx

    exporter: Exporter = export_onnx
    return exporter


# -- the repository ---------------------------------------------------------------


def _open_root(
    root: str, *, access_key: str, secret_key: str, region: str
) -> tuple[ObjectStore, str, Path | None]:
    """(store, key prefix, local folder or None) for a repository root: a store URL
    (`stageflow.core.storage.parse_store_url`, the grammar every store reads)."""
    location = parse_store_url(root, what="model repository")
    store = open_location(location, access_key=access_key, secret_key=secret_key, region=region)
    prefix = f"{location.prefix}/" if location.prefix else ""
    return store, prefix, None if location.folder is None else location.folder.resolve()


class ModelRepository:
    """The repository at `root`, configured by its caller (the stage's settings,
    the CLI's): this layer reads no environment."""

    def __init__(
        self,
        root: str | Path,
        *,
        access_key: str = "",
        secret_key: str = "",
        region: str = "",
        cache_dir: Path | None = None,
        digests: DigestCache = NO_CACHE,
    ) -> None:
        self.root = str(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(DEFAULT_CACHE)
        # Remembers verified files' digests, so materialize re-hashes only changed files.
        self.digests = digests
        self._store, self._prefix, self._local = _open_root(
            self.root, access_key=access_key, secret_key=secret_key, region=region
        )

    def describe(self) -> str:
        return self.root if self._local is None else str(self._local)

    # -- reading ----------------------------------------------------------

    def _key(self, name: str, version: str, rel: str = MANIFEST) -> str:
        return f"{self._prefix}{name}/{version}/{rel}"

    def _manifest_keys(self, under: str = "") -> list[tuple[str, str]]:
        """(name, version) of every model.yaml at depth two below the root."""
        found = []
        for key in self._store.list_keys(self._prefix + under):
            parts = key[len(self._prefix) :].split("/")
            if len(parts) == 3 and parts[2] == MANIFEST:
                found.append((parts[0], parts[1]))
        return found

    def _read(self, name: str, version: str) -> ModelVersion:
        where = f"{self.describe()}/{name}/{version}/{MANIFEST}"
        try:
            text = self._store.get(self._key(name, version))
        except NotFound:
            known = self.versions(name)
            have = f"versions: {', '.join(known)}" if known else "no such model"
            raise NotFound(
                f"model {name}@{version} not found in {self.describe()} ({have})"
            ) from None
        found = parse_manifest(text, where)
        if (found.name, found.version) != (name, version):
            raise InvalidManifest(
                f"{where}: name/version: says {found.ref}, but its folder is {name}/{version}"
            )
        return found

    def scan(self) -> tuple[list[ModelVersion], list[str]]:
        """Every readable version, by name then version; and what could not be read."""
        found, problems = [], []
        for name, version in self._manifest_keys():
            try:
                found.append(self._read(name, version))
            except (InvalidManifest, NotFound) as e:
                problems.append(e.message)
        found.sort(key=lambda v: (v.name, version_order(v.version)))
        return found, problems

    def list(self) -> list[ModelVersion]:
        versions, problems = self.scan()
        for problem in problems:
            log.warning("model.manifest.invalid", problem=problem)
        return versions

    def versions(self, name: str) -> builtins.list[str]:
        check_name(name, "name")
        found = [v for n, v in self._manifest_keys(f"{name}/") if n == name]
        return sorted(found, key=version_order)

    def get(self, name: str, version: str = LATEST) -> ModelVersion:
        check_name(name, "name")
        check_name(version, "version")
        if version == LATEST:
            known = self.versions(name)
            if not known:
                models = sorted({n for n, _ in self._manifest_keys()})
                have = f"models: {', '.join(models)}" if models else "it is empty"
                raise NotFound(f"model {name} not found in {self.describe()} ({have})")
            version = known[-1]
        return self._read(name, version)

    def exists(self, name: str, version: str) -> bool:
        return self._store.exists(self._key(name, version))

    # -- writing ----------------------------------------------------------

    def _publish(self, version: ModelVersion, folder: Path, step: StepFn = _no_step) -> None:
        if self.exists(version.name, version.version):
            raise FailedPrecondition(f"model {version.ref} already exists in {self.describe()}")
        size = sum(entry.size for entry in version.files.values())
        step(f"writing {len(version.files)} files ({size / 2**20:.1f} MiB) to {self.describe()}")
        for rel in version.files:
            self._store.put_file(self._key(version.name, version.version, rel), folder / rel)
        # Last: the version exists for readers once its model.yaml does.
        self._store.put(
            self._key(version.name, version.version),
            version.to_yaml().encode(),
            content_type="application/yaml",
        )
        log.info("model.published", model=version.ref, repository=self.describe())

    def check_new(self, name: str, version: str) -> None:
        """`name@version` is a valid name for a version that does not exist yet."""
        check_name(name, "name")
        if version == LATEST:
            raise InvalidArgument("version", f"{LATEST!r} is reserved")
        check_name(version, "version")
        if self.exists(name, version):
            raise FailedPrecondition(f"model {name}@{version} already exists in {self.describe()}")

    def import_folder(
        self,
        src: Path,
        name: str,
        version: str,
        step: StepFn = _no_step,
        *,
        variants: Iterable[str] = (),
    ) -> ModelVersion:
        """Copy a local diffusers or ESRGAN folder in as `name@version`;
        `step` hears each step as it starts. `variants` (bf16, fp16; diffusers
        folders only) are stored beside the folder's own weights, cast once
        here, so that a stage serving that dtype maps them instead of casting
        at every start (stageflow.inference.variants); `src` is not written to."""
        from stageflow.inference.variants import check_variant_dtype

        self.check_new(name, version)
        src = Path(src)
        dtypes = list(dict.fromkeys(variants))
        for dtype in dtypes:
            try:
                check_variant_dtype(dtype)
            except ValueError as e:
                raise InvalidArgument("variant", str(e)) from None
        step(f"detecting what {src} holds")
        detected = detect_folder(src)
        if dtypes and detected.format != ModelFormat.DIFFUSERS:
            raise InvalidArgument(
                "variant",
                f"{src} is an {detected.format} folder; variants are stored for diffusers folders",
            )
        if not dtypes:
            return self._import_files(src, name, version, detected, step)
        with tempfile.TemporaryDirectory(prefix="stageflow-import-") as scratch:
            # The folder's files as links, beside which the variants are written.
            tree = link_tree(src, Path(scratch) / "folder")
            for dtype in dtypes:
                step(f"casting its weights to {dtype} (the variant's files)")
                _write_variant(tree, dtype)
            return self._import_files(tree, name, version, detected, step)

    def _import_files(
        self, src: Path, name: str, version: str, detected: Detected, step: StepFn
    ) -> ModelVersion:
        step("hashing its files (sha256)")
        files = folder_files(src)
        created = ModelVersion(
            name=name,
            version=version,
            kinds=detected.kinds,
            format=detected.format,
            architecture=detected.architecture,
            backend=Backend.TORCH,
            sizes=detected.sizes,
            defaults=detected.defaults,
            fingerprint=fingerprint_of({rel: e.sha256 for rel, e in files.items()}),
            files=files,
            created_at=datetime.now(UTC).replace(microsecond=0),
            prompt_domain=read_folder_domain(src),
        )
        self._publish(created, src, step)
        return created

    def compile(
        self,
        name: str,
        version: str = LATEST,
        backend: str = "onnx",
        fp16: bool = False,
        *,
        dtype: str | None = None,
        opset: int = 17,
        exporter: Exporter | None = None,
        step: StepFn = _no_step,
    ) -> ModelVersion:
        """Export a torch version to ONNX as a new version ("<version>-<backend>[-fp16]").

        `dtype` (fp32, fp16; bf16 is refused with the reason) overrides `fp16`.
        `latest` here means the latest version that is not itself compiled;
        `step` hears each step as it starts.
        """
        if backend not in COMPILE_BACKENDS:
            raise InvalidArgument("backend", f"must be one of {', '.join(COMPILE_BACKENDS)}")
        dtype = dtype or (precision.FP16 if fp16 else precision.FP32)
        try:
            problem = precision.onnx_dtype_problem(dtype)
        except ValueError as e:
            raise InvalidArgument("dtype", str(e)) from None
        if problem:
            raise InvalidArgument("dtype", problem)
        fp16 = dtype == precision.FP16
        if backend != "onnx":
            # Before any work: a version for a runtime that is absent would carry
            # nothing of it (the ONNX export's fingerprint under its name).
            from stageflow.inference import backends

            backends.require_runtime(backends.backend(str(COMPILE_BACKENDS[backend])))
        if version == LATEST:
            sources = [
                v for v in self.versions(name) if self.get(name, v).format != ModelFormat.ONNX
            ]
            if not sources:
                raise NotFound(f"model {name} has no torch version to compile in {self.describe()}")
            version = sources[-1]
        source = self.get(name, version)
        if source.format == ModelFormat.ONNX:
            raise FailedPrecondition(
                f"model {source.ref} is already compiled; compile its source {source.source}"
            )
        target = compiled_version(source.version, backend, dtype)
        if self.exists(name, target):
            raise FailedPrecondition(f"model {name}@{target} already exists in {self.describe()}")
        step(f"fetching {source.ref} (verified against its model.yaml)")
        src = self.materialize(name, source.version)
        step("loading the exporter (torch, onnx)")
        export = exporter or _onnx_exporter()
        with tempfile.TemporaryDirectory(prefix="stageflow-export-") as scratch:
            dst = Path(scratch) / "out"
            dst.mkdir()
            step(f"exporting {source.ref} to ONNX part by part (the longest step)")
            report: ExportResult = export(src, dst, fp16=fp16, opset=opset)
            step("hashing the exported files (sha256)")
            files = folder_files(dst)
            if not files:
                raise FailedPrecondition(f"exporting {source.ref} wrote no files")
            compiled = ModelVersion(
                name=name,
                version=target,
                kinds=source.kinds,
                format=ModelFormat.ONNX,
                architecture=source.architecture,
                backend=COMPILE_BACKENDS[backend],
                sizes=source.sizes,
                defaults=source.defaults,
                fingerprint=report.fingerprint,
                files=files,
                source=source.ref,
                prompt_domain=source.prompt_domain,
                export={
                    **{
                        k: v
                        for k, v in getattr(report, "settings", {}).items()
                        if isinstance(v, str | int | float | bool)
                    },
                    "backend": backend,
                    "fp16": fp16,
                    "dtype": dtype,
                    "opset": opset,
                },
                created_at=datetime.now(UTC).replace(microsecond=0),
            )
            self._publish(compiled, dst, step)
        return compiled

    # -- materialize --------------------------------------------------------

    def materialize(self, name: str, version: str = LATEST, *, verify: bool = True) -> Path:
        """A local folder holding the version's files, verified against model.yaml.

        Raises DataLoss when the repository's own bytes do not match.
        """
        found = self.get(name, version)
        if self._local is not None:
            folder = self._local / found.name / found.version
            if verify:
                _raise_on_problems(found, check_files(found, folder, self.digests), self.describe())
            return folder
        target = self.cache_dir / found.name / found.version / found.fingerprint
        if target.is_dir():
            problems = check_files(found, target, self.digests) if verify else []
            if not problems:
                return target
            log.warning(
                "model.cache.corrupt", model=found.ref, folder=str(target), problems=problems
            )
            shutil.rmtree(target, ignore_errors=True)
        self._download(found, target)
        return target

    def _download(self, found: ModelVersion, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.parent / f".download-{uuid.uuid4().hex[:12]}"
        try:
            for rel in found.files:
                self._store.get_file(
                    self._key(found.name, found.version, rel), scratch.joinpath(*rel.split("/"))
                )
            _raise_on_problems(found, check_files(found, scratch), self.describe())
            (scratch / MANIFEST).write_text(found.to_yaml(), encoding="utf-8")
            try:
                scratch.rename(target)
            except OSError:
                # Another process filled the cache first; its copy is as good.
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("model.downloaded", model=found.ref, folder=str(target))


def _raise_on_problems(found: ModelVersion, problems: Iterable[str], where: str) -> None:
    problems = list(problems)
    if problems:
        raise DataLoss(
            f"model {found.ref} in {where} does not match its {MANIFEST}: " + "; ".join(problems)
        )
