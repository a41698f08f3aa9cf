"""Receiving an artifact from GetArtifact's chunks, verified against its sha256."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterable
from pathlib import Path

from stageflow.client.errors import DataLoss
from stageflow.v1 import common_pb2
from stageflow.v1 import orchestrator_pb2 as pb


async def receive_artifact(
    responses: AsyncIterable[pb.GetArtifactResponse], what: str, *, expected_sha256: str = ""
) -> tuple[common_pb2.ArtifactRef, bytes]:
    """The artifact's ref (from the first message) and its bytes (every message's
    data, in order). DataLoss when the bytes do not match the ref's size or
    sha256, or `expected_sha256` (what the caller's job records) when given."""
    ref: common_pb2.ArtifactRef | None = None
    digest = hashlib.sha256()
    parts: list[bytes] = []
    async for response in responses:
        if ref is None:
            if not response.HasField("artifact"):
                raise DataLoss(f"{what}: the first message carries no artifact ref")
            ref = response.artifact
        digest.update(response.data)
        parts.append(response.data)
    if ref is None:
        raise DataLoss(f"{what}: the stream ended without a message")
    data = b"".join(parts)
    if ref.size_bytes and len(data) != ref.size_bytes:
        raise DataLoss(f"{what}: received {len(data)} bytes, the artifact has {ref.size_bytes}")
    actual = digest.hexdigest()
    for expected in (ref.sha256, expected_sha256):
        if expected and actual != expected.lower():
            raise DataLoss(f"{what}: sha256 is {actual}, expected {expected}")
    if not ref.sha256 and not expected_sha256:
        raise DataLoss(f"{what}: the artifact ref names no sha256 to verify against")
    return ref, data


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it and a rename,
    so `path` never holds a partial download."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the file; "x" keeps the umask's.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with tmp.open("xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
