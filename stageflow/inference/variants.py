"""Weights stored in the precision they are served in: diffusers' "variants".

A torch stage serving a float32 folder in bf16 (dtype `auto` on a CPU with
native bf16) casts every weight at load: at real scale (the 4.3 GB SD
1.5-size folder) that took the start from 4.5 s to 6.6 s in a quiet run, and
it touches all 4.3 GB, so the process holds the fp32 pages it read and the
bf16 copy (6.2 GB resident at SERVING against 0.5 GB). A variant is the same weights
cast once, ahead of time, and saved beside the originals under diffusers'
variant name, `<name>.<dtype>.safetensors` (`diffusion_pytorch_model.bf16.
safetensors`, `model.bf16.safetensors`). The loader (`stageflow.inference.
sd_parts`) passes `variant=` to each part's `from_pretrained` when the part
has one for the dtype it serves: the weights are then mapped from the file
as they are, with no cast.

The cast here is the one the loader would make (`Tensor.to`, round to
nearest even), so a variant serves the same bits, and the same images, as
the cast at load. Only floating-point tensors are cast; the rest are copied.
A folder's fingerprint covers every file, so adding a variant gives the
folder a new fingerprint (its outputs are the same; the stage cache cannot
know that). Sharded weights (an `.index.json` beside the shards) are
refused: no folder served here is sharded.
"""

from __future__ import annotations

import os
from pathlib import Path

from stageflow.inference import precision

# The diffusers parts that hold weights, SD and SDXL alike.
WEIGHT_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
VARIANT_DTYPES = (precision.FP16, precision.BF16)


def check_variant_dtype(dtype: str) -> str:
    if dtype not in VARIANT_DTYPES:
        raise ValueError(
            f"a variant is stored in {' or '.join(VARIANT_DTYPES)}; got {dtype!r} "
            "(fp32 is the folder's own weights)"
        )
    return dtype


def is_variant(path: Path) -> bool:
    """`x.bf16.safetensors`, not `x.safetensors`."""
    return path.name.count(".") > 1


def variant_path(weights: Path, dtype: str) -> Path:
    return weights.with_name(f"{weights.stem}.{check_variant_dtype(dtype)}{weights.suffix}")


def has_variant(part: Path, dtype: str) -> bool:
    """Whether the part folder holds its weights stored in `dtype` already."""
    if dtype not in VARIANT_DTYPES:
        return False
    return any(part.glob(f"*.{dtype}.safetensors"))


def write_variant(folder: Path, dtype: str) -> list[Path]:
    """Save each weight part's safetensors cast to `dtype` beside it; the files
    written (an existing variant is written again, atomically)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from stageflow.inference.sd_parts import torch_dtype

    target = torch_dtype(check_variant_dtype(dtype))
    written: list[Path] = []
    for part in WEIGHT_PARTS:
        if not (folder / part).is_dir():
            continue
        if any((folder / part).glob("*.index.json")):
            raise ValueError(f"{folder / part}: sharded weights; variants of shards are not built")
        sources = sorted(p for p in (folder / part).glob("*.safetensors") if not is_variant(p))
        for source in sources:
            with safe_open(str(source), framework="pt") as f:
                metadata = f.metadata() or {"format": "pt"}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            cast: dict[str, torch.Tensor] = {
                key: t.to(target) if t.is_floating_point() else t for key, t in tensors.items()
            }
            del tensors
            out = variant_path(source, dtype)
            partial = out.with_name(out.name + ".partial")
            save_file(cast, str(partial), metadata=metadata)
            os.replace(partial, out)
            written.append(out)
    if not written:
        raise ValueError(f"{folder}: no safetensors weights under {', '.join(WEIGHT_PARTS)}")
    return written
