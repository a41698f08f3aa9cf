"""The folder `export_onnx` writes, and its manifest.

```
<folder>/
  onnx_model.json        manifest: kind, config, export settings, file digests, fingerprint
  text_encoder.onnx      token ids (B, L) int64 -> hidden states (B, L, D)
  unet.onnx              sample (B, C, h, w), timestep (1,) float32, text (B, L, D) -> noise
  vae_encoder.onnx       image (B, 3, H, W) in [-1, 1] -> posterior moments (B, 2C, h, w)
  vae_decoder.onnx       unscaled latents (B, C, h, w) -> image (B, 3, H, W) in [-1, 1]
  tokenizer/ scheduler/  copied from the diffusers folder
```
or, for an ESRGAN folder, `upscaler.onnx`: image (B, 3, H, W) in [0, 1] ->
(B, 3, sH, sW). A part too large for one protobuf keeps its weights in
`<part>.onnx.data` beside it.

The fingerprint is sha256 over the digest of every listed file and the export
settings (opset, fp16, exporter, library versions): the same weights exported
differently are a different model to the stage cache. The compile-time
optimised graphs (`<part>.opt.onnx`, see `export.save_optimized`) are listed
and verified but left out of it. Reading the manifest
re-hashes the files, so a corrupt or swapped file fails the load instead of
serving under the old fingerprint. Other files in the folder (the model
repository's model.yaml) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.digests import NO_CACHE, DigestCache

MANIFEST = "onnx_model.json"
FORMAT = "stageflow-onnx"
FORMAT_VERSION = 1

KIND_SD = "stable-diffusion"
KIND_ESRGAN = "esrgan"

TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
UPSCALER = "upscaler"
OPTIMIZED_SUFFIX = ".opt.onnx"
SD_PARTS = (TEXT_ENCODER, UNET, VAE_ENCODER, VAE_DECODER)


@dataclass(frozen=True)
class OnnxManifest:
    kind: str
    # per kind: latent_channels, scaling_factor, vae_scale_factor, unet_levels,
    # max_token_length (SD); scale (ESRGAN)
    config: dict[str, Any]
    settings: dict[str, Any]
    # relative path -> sha256 of every file the model needs
    files: dict[str, str]
    fingerprint: str

    def part(self, folder: Path, name: str) -> Path:
        return folder / f"{name}.onnx"

    def optimized_part(self, folder: Path, name: str) -> Path:
        """The graph ONNX Runtime optimised at compile time (`<name>.opt.onnx`)."""
        return folder / f"{name}{OPTIMIZED_SUFFIX}"

    @property
    def dtype(self) -> str:
        """The precision of its heavy parts (older exports record only fp16)."""
        return str(self.settings.get("dtype") or ("fp16" if self.settings.get("fp16") else "fp32"))

    @property
    def optimized(self) -> dict[str, Any]:
        """How its `.opt.onnx` graphs were made (ORT version, provider, CPU); {}: none."""
        found = self.settings.get("optimized")
        return dict(found) if isinstance(found, dict) else {}

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config,
            "settings": self.settings,
            "files": self.files,
            "fingerprint": self.fingerprint,
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """Digest of every file under `folder` but the manifest, by relative path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def is_derived(rel: str) -> bool:
    """A file made from the others by onnxruntime (a compile-time optimised graph)."""
    return OPTIMIZED_SUFFIX in rel


def fingerprint(files: dict[str, str], settings: dict[str, Any]) -> str:
    """Over the exported graphs and the export settings. The optimised graphs and
    how they were made are left out: they compute what the plain graphs do, and
    onnxruntime does not write them byte for byte the same twice (they are still
    verified against their recorded digests on load)."""
    own = {rel: digest for rel, digest in files.items() if not is_derived(rel)}
    kept = {key: value for key, value in settings.items() if key != "optimized"}
    body = json.dumps({"files": own, "settings": kept}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def is_onnx_folder(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(
    folder: Path, *, verify: bool = True, digests: DigestCache = NO_CACHE
) -> OnnxManifest:
    """The folder's manifest; with `verify`, every listed file re-hashed (those
    whose stamp `digests` has seen unchanged are not).

    Raises FailedPrecondition naming the problem: not an export, a newer
    format, a missing or corrupt file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FailedPrecondition(
            f"{folder} is not an ONNX export (no {MANIFEST}); export it first "
            "(stageflow.inference.onnx.export.export_onnx / `stageflow models compile`)"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("format") != FORMAT or raw.get("format_version", 0) > FORMAT_VERSION:
        raise FailedPrecondition(
            f"{path}: format {raw.get('format')!r} v{raw.get('format_version')} is not "
            f"{FORMAT} v{FORMAT_VERSION} or older"
        )
    manifest = OnnxManifest(
        kind=raw["kind"],
        config=raw["config"],
        settings=raw["settings"],
        files=raw["files"],
        fingerprint=raw["fingerprint"],
    )
    if verify:
        for rel in manifest.files:
            if not (folder / rel).is_file():
                raise FailedPrecondition(f"{folder}: {rel} is missing")
        actual = digests.digests(folder, list(manifest.files))
        for rel, digest in manifest.files.items():
            if actual[rel] != digest:
                raise FailedPrecondition(f"{folder}: {rel} does not match its recorded sha256")
        if fingerprint(manifest.files, manifest.settings) != manifest.fingerprint:
            raise FailedPrecondition(f"{path}: the fingerprint does not match the files")
    return manifest
