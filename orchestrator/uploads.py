"""Uploaded images: a caller's own image as a job's input, per tenant.

An upload is checked from its header (`stageflow.core.image_header`: PNG,
JPEG or WebP, bytes, sides and pixel count) before it is stored, then stored
content-addressed under its tenant's prefix, ``uploads/<tenant>/sha256/...``.
Its id, ``<sha256>.<ext>``, names the bytes, and resolving an id always looks
under the *caller's* tenant: another tenant's upload id names an object that
does not exist there, so it is NOT_FOUND like an unknown one, with no table
of owners to keep.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from stageflow.core.artifacts import artifact_key, get_artifact, put_artifact
from stageflow.core.errors import InvalidArgument, NotFound
from stageflow.core.image_header import EXTENSIONS, MEDIA_TYPES, check_upload, read_header
from stageflow.core.storage import ObjectStore
from stageflow.v1 import common_pb2, orchestrator_pb2

UPLOAD_PREFIX = "uploads"
# The tenant segment with authentication off: not a valid tenant name.
NO_TENANT = "_"
_ID = re.compile(r"^([0-9a-f]{64})\.(png|jpg|webp)$")
_FORMAT_OF_EXT = {ext: fmt for fmt, ext in EXTENSIONS.items()}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192


def _prefix(tenant: str | None) -> str:
    return f"{UPLOAD_PREFIX}/{tenant or NO_TENANT}"


async def store_upload(
    store: ObjectStore, data: bytes, tenant: str | None, limits: UploadLimits
) -> orchestrator_pb2.UploadImageResponse:
    """Check `data`, then store it under `tenant`'s prefix; the answer names it."""
    header = check_upload(
        data,
        max_bytes=limits.max_bytes,
        max_pixels=limits.max_pixels,
        max_side=limits.max_side,
        field="data",
    )
    art = await asyncio.to_thread(
        put_artifact, store, data, prefix=_prefix(tenant), media_type=header.media_type
    )
    return orchestrator_pb2.UploadImageResponse(
        upload_id=f"{art.sha256}.{EXTENSIONS[header.format]}",
        image=common_pb2.ArtifactRef(
            key=art.key, sha256=art.sha256, size_bytes=art.size_bytes, media_type=art.media_type
        ),
        width=header.width,
        height=header.height,
        format=header.format,
    )


async def resolve_upload(
    store: ObjectStore, upload_id: str, tenant: str | None, *, field: str = "input_image"
) -> tuple[common_pb2.ArtifactRef, int, int]:
    """The stored upload `upload_id` of `tenant` and its width and height;
    NOT_FOUND when `tenant` has no such upload."""
    match = _ID.match(upload_id)
    if match is None:
        raise InvalidArgument(
            field, f"must be an upload id (<sha256>.png|jpg|webp), got {upload_id[:80]!r}"
        )
    digest, ext = match.groups()
    key = artifact_key(_prefix(tenant), digest, ext)
    if not await asyncio.to_thread(store.exists, key):
        raise NotFound(f"upload {upload_id!r} not found")
    data = await asyncio.to_thread(get_artifact, store, key, digest, field=field)
    header = read_header(data, field=field)
    ref = common_pb2.ArtifactRef(
        key=key,
        sha256=digest,
        size_bytes=len(data),
        media_type=MEDIA_TYPES[_FORMAT_OF_EXT[ext]],
    )
    return ref, header.width, header.height
