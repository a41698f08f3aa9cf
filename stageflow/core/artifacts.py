"""Content-addressed artifacts: the key of an object is its sha256.

A writer names its output by digest, so the same bytes always land on the same
key and a second write is skipped; a reader checks the digest it was given, so
a truncated or swapped object is caught where it is read, not downstream.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from stageflow.core.errors import DataLoss, InvalidArgument, NotFound
from stageflow.core.storage import ObjectStore, check_key

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# Fixed here rather than taken from `mimetypes`, whose answers depend on the
# host's /etc/mime.types: a key must not change from one machine to another.
_EXTENSIONS = {
    "image/png": "png",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "application/x-safetensors": "safetensors",
    "application/octet-stream": "bin",
}


@dataclass(frozen=True)
class Artifact:
    key: str
    sha256: str
    size_bytes: int
    media_type: str


def artifact_key(prefix: str, digest: str, ext: str) -> str:
    """``<prefix>/sha256/<first two hex digits>/<digest>.<ext>``; the fan-out
    keeps local folders small."""
    return f"{prefix.strip('/')}/sha256/{digest[:2]}/{digest}.{ext}"


def put_artifact(
    store: ObjectStore,
    data: bytes,
    *,
    prefix: str = "artifacts",
    media_type: str = "image/png",
) -> Artifact:
    """Store `data` under its digest; an object already there is not rewritten."""
    digest = hashlib.sha256(data).hexdigest()
    key = artifact_key(prefix, digest, _EXTENSIONS.get(media_type, "bin"))
    # Two writers racing here both write the same bytes: harmless.
    if not store.exists(key):
        store.put(key, data, content_type=media_type)
    return Artifact(key=key, sha256=digest, size_bytes=len(data), media_type=media_type)


def get_artifact(store: ObjectStore, key: str, sha256: str, *, field: str = "artifact") -> bytes:
    """Read an artifact and verify its digest; `field` names the request field
    the reference came from, so the caller's error says which input was bad."""
    if not _SHA256_HEX.fullmatch(sha256):
        raise InvalidArgument(
            f"{field}.sha256", f"must be 64 lowercase hex digits, got {sha256[:80]!r}"
        )
    check_key(key, field=f"{field}.key")
    try:
        data = store.get(key)
    except NotFound:
        raise NotFound(f"{field} {key}: not found in {store.describe()}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataLoss(f"{field} {key}: sha256 mismatch, expected {sha256} got {actual}")
    return data
