"""The content-addressed stage cache: same inputs, same model, same output.

A stage run's key is a sha256 over everything that decides its output bytes:
the stage, the model's identity (name, version, backend, file fingerprint from
the stage's Describe), the exact parameters (the RunRequest's `params` oneof,
serialized deterministically; the seed is one of them) and the digests of its
input artifacts. Job ids, request ids and output prefixes are left out: they
name a run, they do not change its pixels. Entries live in the job DB and are
checked against the object store before they are trusted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from stageflow.core.artifacts import artifact_intact
from stageflow.core.logging import get_logger
from stageflow.core.storage import ObjectStore
from stageflow.orchestrator.store import JobStore
from stageflow.v1 import common_pb2, stage_pb2

# Bump when the key's recipe changes, so old entries are never matched.
KEY_VERSION = 1

log = get_logger(__name__)


def cache_key(stage: str, model: common_pb2.ModelInfo, run: stage_pb2.RunRequest) -> str:
    """The run's content address; "" when the model is unidentified (not cacheable)."""
    if not model.fingerprint:
        return ""
    kind = run.WhichOneof("params")
    params = getattr(run, kind).SerializeToString(deterministic=True) if kind else b""
    recipe = {
        "v": KEY_VERSION,
        "stage": stage,
        "model": [model.name, model.version, model.backend, model.fingerprint],
        "params_kind": kind or "",
        "params": params.hex(),
        "inputs": [run.image.sha256 if run.HasField("image") else "", run.mask.sha256],
    }
    if run.HasField("latents"):  # a latent hand-off's input (absent from older keys)
        recipe["latents"] = run.latents.sha256
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class StageCache:
    """Lookups verify the artifact is still in the store with its size and
    digest, and drop an entry whose artifact does not verify: the stage then
    runs again and its write replaces the bad object (when the orchestrator
    has a store; without one the entry is trusted)."""

    def __init__(self, jobs: JobStore, store: ObjectStore | None) -> None:
        self._jobs = jobs
        self._store = store

    async def get(self, key: str) -> stage_pb2.StageResult | None:
        result = await self._jobs.cache_get(key)
        if result is None:
            return None
        if self._store is not None and not await asyncio.to_thread(self._intact, result.output):
            log.warning("stage_cache.stale", key=key, output=result.output.key)
            await self._jobs.cache_delete(key)
            return None
        return result

    async def put(self, key: str, stage: str, result: stage_pb2.StageResult) -> None:
        await self._jobs.cache_put(key, stage, result)

    def _intact(self, ref: common_pb2.ArtifactRef) -> bool:
        assert self._store is not None
        return artifact_intact(self._store, ref.key, ref.sha256, ref.size_bytes)
