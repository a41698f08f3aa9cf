"""Latent hand-off artifacts: safetensors bytes, the same for the same latents."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.interface import Latents, LatentSpace
from stageflow.stage.latents import decode_latents, encode_latents

SPACE = LatentSpace("sdxl", 4, 8, 0.13025)
GOLDEN = "4396effe5658e076ae33b5bed3dc5cab4b3413616014c83c0d29d1db338754f1"


def _latents(seed: int = 0) -> Latents:
    array = np.random.default_rng(seed).standard_normal((1, 4, 8, 6)).astype(np.float32)
    return Latents(array, SPACE, 0.8, 20)


def test_round_trip_keeps_every_bit_and_the_metadata() -> None:
    latents = _latents()
    back = decode_latents(encode_latents(latents))
    assert back.space == SPACE and (back.denoising_end, back.steps) == (0.8, 20)
    assert back.array.dtype == np.float32 and back.array.shape == (1, 4, 8, 6)
    np.testing.assert_array_equal(back.array, latents.array)
    assert back.size == (48, 64)


def test_any_safetensors_reader_opens_it_with_dtype_and_shape() -> None:
    from safetensors.numpy import load

    data = encode_latents(_latents())
    tensors = load(data)
    assert tensors["latents"].dtype == np.float32 and tensors["latents"].shape == (1, 4, 8, 6)
    (size,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    assert meta["family"] == "sdxl" and meta["scaling_factor"] == "0.13025"


def test_the_bytes_are_canonical_in_every_process() -> None:
    """Content addressing: safetensors' own writer orders its header by a
    per-process hash seed; ours writes sorted JSON, so these bytes (and their
    digest, pinned here) are the same in every process and on every machine."""
    array = np.arange(96, dtype=np.float32).reshape(1, 4, 4, 6)
    data = encode_latents(Latents(array, LatentSpace("sd", 4, 8, 0.18215), 0.8, 20))
    (size,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + size].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    assert (8 + size) % 8 == 0
    assert hashlib.sha256(data).hexdigest() == GOLDEN


@pytest.mark.parametrize(
    ("mangle", "needle"),
    [
        (lambda d: d[:5], "5 bytes"),
        (lambda d: d[:-4], "data offsets"),
        (lambda d: struct.pack("<Q", 10**9) + d[8:], "header"),
        (lambda d: d.replace(b'"F32"', b'"F16"'), "one F32 tensor"),
        (lambda d: d.replace(b'"channels":"4"', b'"channels":"5"'), "shape [1, 4, 8, 6]"),
        (lambda d: d.replace(b'"family"', b'"famiyy"'), "KeyError"),
    ],
)
def test_bytes_that_are_not_a_handoff_artifact_are_refused(mangle: object, needle: str) -> None:
    data = mangle(encode_latents(_latents()))  # type: ignore[operator]
    with pytest.raises(FailedPrecondition) as err:
        decode_latents(data)
    assert "latents: not a latent hand-off artifact" in err.value.message
    assert needle in err.value.message, err.value.message
