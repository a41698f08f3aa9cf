"""Content-addressed artifacts: the key of an object is its sha256.

A writer names its output by digest, so the same bytes always land on the same
key; a second write is skipped only when the object already there has the
right size and digest (a truncated or overwritten one is replaced, so the
store repairs itself rather than trusting a key's existence). A reader checks
the digest it was given, so a bad object is caught where it is read, not
downstream.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from stageflow.core.errors import DataLoss, InvalidArgument, NotFound
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore, check_key

log = get_logger(__name__)

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
    """Store `data` under its digest. An object already there is kept when it
    verifies (size and digest) and replaced when it does not."""
    digest = hashlib.sha256(data).hexdigest()
    key = artifact_key(prefix, digest, _EXTENSIONS.get(media_type, "bin"))
    # Two writers racing here both write the same bytes: harmless.
    found = stored_digest(store, key)
    if found != (len(data), digest):
        if found is not None:
            log.warning("artifact.repaired", key=key, found_size=found[0], found_sha256=found[1])
        store.put(key, data, content_type=media_type)
    return Artifact(key=key, sha256=digest, size_bytes=len(data), media_type=media_type)


def stored_digest(store: ObjectStore, key: str) -> tuple[int, str] | None:
    """(size, sha256) of the object stored at `key`, None when there is none."""
    try:
        data = store.get(key)
    except NotFound:
        return None
    return len(data), hashlib.sha256(data).hexdigest()


def artifact_intact(store: ObjectStore, key: str, sha256: str, size_bytes: int = 0) -> bool:
    """Whether `key` holds an object with this digest (and size, when given, > 0).
    Missing or unreadable is not intact: whoever asks recomputes it."""
    try:
        found = stored_digest(store, key)
    except Exception:
        log.warning("artifact.unreadable", key=key, exc_info=True)
        return False
    if found is None:
        return False
    size, digest = found
    return digest == sha256 and (size_bytes <= 0 or size == size_bytes)


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
        # Not the store's own message: it names the server's folder or bucket.
        raise NotFound(f"{field} {key}: not found in the object store") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataLoss(f"{field} {key}: sha256 mismatch, expected {sha256} got {actual}")
    return data
