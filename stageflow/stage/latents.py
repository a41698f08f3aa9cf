"""Latents <-> safetensors bytes at the storage boundary (latent hand-off).

A hand-off artifact is a safetensors file holding one float32 tensor named
"latents" (1, C, H/f, W/f); dtype and shape are in its header, and its
metadata says which latent space it is in (`LatentSpace`) and how far through
which schedule (denoising_end, steps). Any safetensors reader opens it.

The bytes are written here, not by the safetensors library, whose header
order varies from process to process: artifacts are content-addressed, so the
same latents must always give the same bytes (the same key, a stage-cache hit
downstream). The header is JSON with sorted keys, padded to 8 bytes.

Reading checks everything before the array is built: the header's size, the
single float32 4-D tensor, offsets that cover the data exactly, the metadata.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.interface import Latents, LatentSpace

MEDIA_TYPE = "application/x-safetensors"
TENSOR = "latents"
# A header of a few hundred bytes is all a hand-off writes.
MAX_HEADER_BYTES = 16 * 1024


def encode_latents(latents: Latents) -> bytes:
    array = np.ascontiguousarray(latents.array, dtype="<f4")
    space = latents.space
    metadata = {
        "family": space.family,
        "channels": str(space.channels),
        "vae_scale_factor": str(space.vae_scale_factor),
        "scaling_factor": repr(float(space.scaling_factor)),
        "denoising_end": repr(float(latents.denoising_end)),
        "steps": str(latents.steps),
    }
    header = {
        "__metadata__": metadata,
        TENSOR: {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + array.tobytes()


def decode_latents(data: bytes, *, field: str = "latents") -> Latents:
    """The latents in stored bytes; FailedPrecondition naming `field` for bytes
    that are not a hand-off artifact."""

    def bad(why: str) -> FailedPrecondition:
        return FailedPrecondition(f"{field}: not a latent hand-off artifact ({why})")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise bad(f"a {size}-byte header")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = header.pop("__metadata__")
        (name, entry), *others = header.items()
        shape = [int(n) for n in entry["shape"]]
        start, end = (int(n) for n in entry["data_offsets"])
        space = LatentSpace(
            family=str(meta["family"]),
            channels=int(meta["channels"]),
            vae_scale_factor=int(meta["vae_scale_factor"]),
            scaling_factor=float(meta["scaling_factor"]),
        )
        denoising_end, steps = float(meta["denoising_end"]), int(meta["steps"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise bad(f"header: {type(e).__name__}: {e}") from None
    body = data[8 + size :]
    if others or name != TENSOR or entry.get("dtype") != "F32":
        raise bad(f"expected one F32 tensor {TENSOR!r}, got {[name, *(k for k, _ in others)]}")
    if len(shape) != 4 or shape[0] != 1 or shape[1] != space.channels or min(shape) < 1:
        raise bad(f"shape {shape}, expected (1, {space.channels}, h, w)")
    if (start, end) != (0, 4 * int(np.prod(shape))) or end != len(body):
        raise bad(f"data offsets {[start, end]} for {len(body)} bytes of data")
    array = np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32)
    return Latents(array, space, denoising_end, steps)
