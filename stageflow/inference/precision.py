"""The numeric precision a model is served in: fp32, fp16 or bf16.

Chosen per stage process (the `dtype` setting) for torch folders, where the
weights are cast at load; fixed at compile time for ONNX exports (the
export's own dtype, recorded in its manifest). The denoise loop itself stays
in float32 whatever the weights are: latents and noise are drawn in float32
from the seed and cast at each part's boundary, so one seed means one image
up to the parts' rounding, and the scheduler's arithmetic never loses bits.

Two models that differ only in precision make different pixels, so a
non-default precision is folded into the model's fingerprint (and through
it into the stage cache key); fp32 keeps the files' own fingerprint, the
value a repository version records. No torch here.

The setting may also be `auto`: resolved once at load to one of the three
(stageflow.inference.hardware for torch: bf16 where the CPU has it natively;
a compiled export's own dtype), and only the resolved one reaches the
fingerprint, so `auto` and the dtype it chose share cache entries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

FP32 = "fp32"
FP16 = "fp16"
BF16 = "bf16"
DTYPES = (FP32, FP16, BF16)
DEFAULT_DTYPE = FP32
# Resolved at load; never a dtype of its own.
AUTO = "auto"
SETTINGS = (*DTYPES, AUTO)


def check_dtype(name: str, field: str = "dtype") -> str:
    """`name` if it is a known precision, else ValueError naming the allowed ones."""
    if name not in DTYPES:
        raise ValueError(f"{field} must be one of {', '.join(DTYPES)}; got {name!r}")
    return name


def check_setting(name: str, field: str = "dtype") -> str:
    """`name` if it is a precision or `auto`, else ValueError naming the allowed ones."""
    if name not in SETTINGS:
        raise ValueError(f"{field} must be one of {', '.join(SETTINGS)}; got {name!r}")
    return name


@dataclass(frozen=True)
class DtypeChoice:
    """The precision a load runs in, what was asked for, and why the one follows
    from the other (shown in Describe and every stage result's model info)."""

    dtype: str
    setting: str
    reason: str
    # The CPU's bf16-related flags and torch's dispatch level (stageflow.inference.
    # hardware), where they bear on the choice (torch on CPU); empty elsewhere.
    cpu_features: tuple[str, ...] = ()
    cpu_capability: str = ""


def exported_choice(setting: str, exported: str, folder: object) -> DtypeChoice:
    """A compiled export runs in its own dtype: `auto` and fp32 (the default) take
    it, another setting must name it (ValueError says what to do)."""
    check_setting(setting)
    if setting == AUTO:
        return DtypeChoice(exported, setting, f"auto: {exported}, the export's own dtype")
    if setting not in (DEFAULT_DTYPE, exported):
        raise ValueError(
            f"{folder} is a {exported} export; dtype {setting} needs a {setting} export "
            f"(`stageflow models compile --dtype {setting}`) or the torch backend"
        )
    reason = (
        f"set: dtype={setting}"
        if setting == exported
        else f"{exported}, the export's own (the default fp32 takes a compiled model's dtype)"
    )
    return DtypeChoice(exported, setting, reason)


def with_dtype(fingerprint: str, dtype: str) -> str:
    """The fingerprint of `fingerprint`'s files served in `dtype`: unchanged for
    fp32, else sha256 over both (a different model to the stage cache)."""
    if dtype == DEFAULT_DTYPE:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}\0dtype={check_dtype(dtype)}".encode()).hexdigest()


# What an ONNX export can hold. bf16 is refused: ONNX's Conv has no bfloat16
# type at the opsets we export (onnxruntime 1.32 rejects the graph: "Type
# 'tensor(bfloat16)' of input parameter ... of operator (Conv) is invalid"),
# and its CPU provider has no bf16 kernels to run it. bf16 is served by the
# torch backend, which casts at load.
ONNX_DTYPES = (FP32, FP16)


def onnx_dtype_problem(dtype: str) -> str:
    """Why `dtype` cannot be exported to ONNX; "" when it can."""
    check_dtype(dtype)
    if dtype in ONNX_DTYPES:
        return ""
    return (
        f"{dtype} cannot be exported to ONNX: ONNX's Conv has no bfloat16 type at the "
        "opsets exported here and onnxruntime's CPU provider has no bf16 kernels; "
        f"serve {dtype} with the torch backend (the dtype setting) or export fp16"
    )
