"""The ncnn reader and the ncnn -> PyTorch mappings, on tiny .param/.bin pairs written here.

The writer below follows ncnn's layout (a tagged fp16 array per convolution
weight, raw float32 biases and PReLU slopes); the real files' layout is
checked against ncnn itself in tests/integration/test_realesrgan_ncnn.py.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stageflow.inference.ncnn import (
    TAG_FP16,
    TAG_INT8,
    NcnnFormatError,
    parse_param,
    read_ncnn,
)


@dataclass
class Writer:
    """An ncnn model being written: layer lines and the .bin bytes, in order."""

    lines: list[str] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    blob: str = "data"
    blobs: int = 1

    def layer(self, kind: str, name: str, params: str = "", bottoms: int = 1) -> None:
        top = f"b{len(self.lines)}"
        ins = " ".join([self.blob] * bottoms)
        self.lines.append(f"{kind:<16} {name:<12} {bottoms} 1 {ins} {top} {params}".rstrip())
        self.blob, self.blobs = top, self.blobs + 1

    def fp16(self, values: np.ndarray) -> None:
        self.data += struct.pack("<I", TAG_FP16)
        raw = np.asarray(values, dtype="<f2").tobytes()
        self.data += raw + b"\0" * ((-len(raw)) % 4)

    def raw(self, values: np.ndarray) -> None:
        self.data += np.asarray(values, dtype="<f4").tobytes()

    def conv(self, name: str, weight: np.ndarray, bias: np.ndarray, act: str = "") -> None:
        out, _, k, _ = weight.shape
        self.layer("Convolution", name, f"0={out} 1={k} 4={k // 2} 5=1 6={weight.size} {act}")
        self.fp16(weight.ravel())
        self.raw(bias)

    def save(self, folder: Path, name: str = "model") -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        text = ["7767517", f"{len(self.lines) + 1} {self.blobs}", "Input input 0 1 data"]
        param, weights = folder / f"{name}.param", folder / f"{name}.bin"
        param.write_text("\n".join(text + self.lines) + "\n")
        weights.write_bytes(bytes(self.data))
        return param, weights


LRELU = "9=2 -23310=1,2.000000e-01"


# -- the reader --------------------------------------------------------------------


def test_param_lines_parse_into_types_blobs_and_typed_params() -> None:
    layers = parse_param(
        "7767517\n3 4\n"
        "Input  in  0 1 data\n"
        "Convolution conv 1 1 data c 0=8 1=3 4=1 5=1 6=216 9=2 -23310=1,2.000000e-01\n"
        "Eltwise add 2 1 c data out 0=1 -23301=2,2.000000e-01,1.000000e+00\n"
    )
    conv, add = layers[1], layers[2]
    assert (conv.type, conv.name) == ("Convolution", "conv")
    assert (conv.bottoms, conv.tops) == (("data",), ("c",))
    assert conv.params[0] == 8 and isinstance(conv.params[0], int)
    assert conv.array_param(10) == (0.2,)
    assert add.bottoms == ("c", "data") and add.array_param(1) == (0.2, 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7767518\n1 1\nInput in 0 1 data\n", "not an ncnn .param"),
        ("7767517\n2 1\nInput in 0 1 data\n", "says 2 layers, holds 1"),
        ("7767517\n1 1\nInput in 0 2 data\n", "fewer blobs"),
        ("7767517\n1 1\nInput in 0 1 data 0=x\n", "not a number"),
        ("7767517\n1 1\nInput in 0 1 data -23310=3,1.0\n", "says 3 values, has 1"),
    ],
)
def test_malformed_param_files_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(NcnnFormatError, match=message):
        parse_param(text)


def test_weights_read_back_exactly_fp16_tagged_and_raw_fp32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 1 x 1 x 3 x 3 = 9 fp16 values: 18 bytes, padded to 20 before the bias.
    weight = rng.standard_normal((1, 1, 3, 3)).astype(np.float16)
    bias = rng.standard_normal(1).astype(np.float32)
    slope = rng.standard_normal(1).astype(np.float32)
    w = Writer()
    w.conv("conv", weight, bias)
    w.layer("PReLU", "prelu", "0=1")
    w.raw(slope)
    graph = read_ncnn(*w.save(tmp_path))
    conv, prelu = graph.of_type("Convolution")[0], graph.of_type("PReLU")[0]
    assert conv.weights["weight"].dtype == np.float16
    np.testing.assert_array_equal(conv.weights["weight"], weight)
    np.testing.assert_array_equal(conv.weights["bias"], bias)
    np.testing.assert_array_equal(prelu.weights["slope"], slope)


def test_float32_tagged_weights_are_read_as_float32(tmp_path: Path) -> None:
    weight = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / 7
    w = Writer()
    w.layer("Convolution", "conv", "0=1 1=3 4=1 5=0 6=9")
    w.data += struct.pack("<I", 0) + weight.tobytes()
    conv = read_ncnn(*w.save(tmp_path)).layers[1]
    assert conv.weights["weight"].dtype == np.float32
    np.testing.assert_array_equal(conv.weights["weight"], weight)
    assert "bias" not in conv.weights


def _one_conv(tmp_path: Path, extra: bytes = b"", cut: int = 0) -> tuple[Path, Path]:
    w = Writer()
    w.conv("conv", np.ones((2, 1, 3, 3), np.float16), np.zeros(2, np.float32))
    param, weights = w.save(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes((data[:-cut] if cut else data) + extra)
    return param, weights


def test_a_bin_shorter_or_longer_than_the_param_asks_for_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NcnnFormatError, match=r"only 4 left \(.param and .bin do not match\)"):
        read_ncnn(*_one_conv(tmp_path, cut=4))
    with pytest.raises(NcnnFormatError, match="3 bytes left after the last layer"):
        read_ncnn(*_one_conv(tmp_path, extra=b"abc"))


def test_quantized_weights_and_unknown_layers_are_refused(tmp_path: Path) -> None:
    w = Writer()
    w.layer("Convolution", "conv", "0=1 1=1 5=0 6=1")
    w.data += struct.pack("<I", TAG_INT8) + b"\1\0\0\0"
    with pytest.raises(NcnnFormatError, match="int8; only fp16 and float32"):
        read_ncnn(*w.save(tmp_path))
    w = Writer()
    w.layer("Deconvolution", "up", "0=1")
    with pytest.raises(NcnnFormatError, match="type Deconvolution, which this reader does not"):
        read_ncnn(*w.save(tmp_path))


# -- the mappings ---------------------------------------------------------------------


def _as_fp16(net: Any) -> None:
    """Round conv weights to fp16 as ncnn stores them (biases and slopes stay fp32)."""
    import torch

    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.ndim == 4:
                p.copy_(p.half().float())


def _srvgg_files(tmp_path: Path, net: Any, scale: int, *, order: str = "") -> tuple[Path, Path]:
    w = Writer()
    w.layer("Split", "split", bottoms=1)
    for index, module in enumerate(net.body):
        params = {k: v.detach().numpy() for k, v in module.named_parameters()}
        if "bias" in params:
            w.conv(f"conv{index}", params["weight"], params["bias"])
        else:
            w.layer("PReLU", f"prelu{index}", f"0={params['weight'].size}")
            w.raw(params["weight"])
    w.layer("PixelShuffle", "shuffle", f"0={scale} {order}".strip())
    w.layer("Interp", "nearest", f"0=1 1={scale}.0 2={scale}.0")
    w.layer("BinaryOp", "add", bottoms=2)
    return w.save(tmp_path)


def _outputs_match(folder: Path, net: Any) -> None:
    import torch

    from stageflow.inference import sr_archs

    loaded, _ = sr_archs.load_upscaler(folder)
    x = torch.rand(1, 3, 7, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=1e-6)


def test_srvgg_from_ncnn_loads_with_real_esrgan_names_and_runs_like_the_source(
    tmp_path: Path,
) -> None:
    import torch

    from stageflow.inference import sr_archs
    from stageflow.inference.srvgg import SRVGGNetCompact, SRVGGNetConfig

    torch.manual_seed(0)
    config = SRVGGNetConfig(num_feat=4, num_conv=2, scale=2)
    net = SRVGGNetCompact(config)
    with torch.no_grad():  # PReLU starts at 0.25 everywhere: make the slopes tell apart
        for name, param in net.named_parameters():
            if param.ndim == 1 and int(name.split(".")[1]) % 2:
                param.uniform_(0, 0.5)
    _as_fp16(net)
    out = tmp_path / "converted"
    arch, read = sr_archs.convert_ncnn(*_srvgg_files(tmp_path, net, 2), out, licence="BSD-3-Clause")
    assert (arch.name, read) == ("SRVGGNetCompact", config)
    _outputs_match(out, net)
    source = json.loads((out / sr_archs.SOURCE_FILE).read_text())
    assert source["format"] == "ncnn" and source["licence"] == "BSD-3-Clause"
    assert len(source["bin_sha256"]) == 64


def test_srvgg_refuses_a_depth_to_space_order_it_does_not_implement(tmp_path: Path) -> None:
    import torch

    from stageflow.inference import sr_archs
    from stageflow.inference.srvgg import SRVGGNetCompact, SRVGGNetConfig

    torch.manual_seed(0)
    net = SRVGGNetCompact(SRVGGNetConfig(num_feat=4, num_conv=1, scale=2))
    files = _srvgg_files(tmp_path, net, 2, order="1=1")
    with pytest.raises(NcnnFormatError, match="pixel-shuffle order"):
        sr_archs.convert_ncnn(*files, tmp_path / "out")


def _rrdb_files(tmp_path: Path, net: Any, *, wrong_act: str = "") -> tuple[Path, Path]:
    from torch import nn

    from stageflow.inference.rrdbnet import _LRELU_CONVS

    w = Writer()
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        act = LRELU if name.rsplit(".", 1)[-1] in _LRELU_CONVS else ""
        if name == wrong_act:
            act = "" if act else LRELU
        assert module.bias is not None
        w.conv(name, module.weight.detach().numpy(), module.bias.detach().numpy(), act)
    # The sums and upsamplings the mapping counts (wired as a chain: it reads no wiring).
    for index in range(4 * len(net.body)):
        w.layer("Eltwise", f"sum{index}", "0=1 -23301=2,2.000000e-01,1.000000e+00", bottoms=2)
    for index in range(2):
        w.layer("Interp", f"up{index}", "0=1 1=2.0 2=2.0")
    w.layer("BinaryOp", "trunk", bottoms=2)
    return w.save(tmp_path)


def test_rrdbnet_from_ncnn_maps_convs_in_order_and_runs_like_the_source(tmp_path: Path) -> None:
    import torch

    from stageflow.inference import sr_archs
    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig

    torch.manual_seed(0)
    config = RRDBNetConfig(num_feat=4, num_block=2, num_grow_ch=2)
    net = RRDBNet(config)
    with torch.no_grad():  # biases start at zero: give each conv its own
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
    _as_fp16(net)
    out = tmp_path / "converted"
    arch, read = sr_archs.convert_ncnn(*_rrdb_files(tmp_path, net), out)
    assert (arch.name, read) == ("RRDBNet", config)
    _outputs_match(out, net)


def test_rrdbnet_mapping_checks_each_convs_activation(tmp_path: Path) -> None:
    import torch

    from stageflow.inference import sr_archs
    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig

    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(num_feat=4, num_block=1, num_grow_ch=2))
    files = _rrdb_files(tmp_path, net, wrong_act="body.0.rdb2.conv5")
    with pytest.raises(NcnnFormatError, match=r"body.0.rdb2.conv5\): activation leakyrelu"):
        sr_archs.convert_ncnn(*files, tmp_path / "out")


def test_a_graph_of_neither_architecture_says_why_for_each(tmp_path: Path) -> None:
    from stageflow.inference import sr_archs

    w = Writer()
    w.conv("conv", np.ones((3, 3, 3, 3), np.float16), np.zeros(3, np.float32))
    with pytest.raises(NcnnFormatError, match=r"not RRDBNet: .*; not SRVGGNetCompact: "):
        sr_archs.convert_ncnn(*w.save(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- stageflow models import-ncnn -------------------------------------------------------


def test_import_ncnn_writes_a_repository_version_the_stage_can_serve(tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from stageflow.cli.main import app
    from stageflow.inference.repository import ModelRepository
    from stageflow.inference.srvgg import SRVGGNetCompact, SRVGGNetConfig

    torch.manual_seed(0)
    net = SRVGGNetCompact(SRVGGNetConfig(num_feat=4, num_conv=1, scale=4))
    param, weights = _srvgg_files(tmp_path / "ncnn", net, 4)
    repo = tmp_path / "repo"
    args = [str(param), str(weights), "--name", "compact", "--version", "1"]
    args += ["--repository", str(repo), "--licence", "BSD-3-Clause"]
    done = CliRunner().invoke(app, ["models", "import-ncnn", *args])
    assert done.exit_code == 0, done.output
    assert "imported compact@1: srvgg-x4 from model.param" in done.stdout
    version = ModelRepository(repo).get("compact", "1")
    assert (version.architecture, [str(k) for k in version.kinds]) == ("srvgg-x4", ["upscale"])
    assert set(version.files) == {"config.json", "model.safetensors", "source.json"}
    # The same version again fails before any conversion, naming it.
    again = CliRunner().invoke(app, ["models", "import-ncnn", *args])
    assert again.exit_code == 1 and "compact@1 already exists" in again.output


def test_import_ncnn_of_mismatched_files_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stageflow.cli.main import app

    param, weights = _one_conv(tmp_path, cut=4)
    args = [str(param), str(weights), "--name", "x", "--version", "1"]
    done = CliRunner().invoke(app, ["models", "import-ncnn", *args, "--repository", str(tmp_path)])
    assert done.exit_code == 2
    assert ".param and .bin do not match" in done.output
    assert not (tmp_path / "x").exists()
