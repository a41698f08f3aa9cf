"""RRDBNet's optional bicubic residual and fp16 weights on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_bicubic_residual_with_a_zero_last_conv_is_bicubic() -> None:
    import torch
    import torch.nn.functional as F

    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig

    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, residual="bicubic"))
    torch.nn.init.zeros_(net.conv_last.weight)
    assert net.conv_last.bias is not None
    torch.nn.init.zeros_(net.conv_last.bias)
    x = torch.rand(1, 3, 8, 8)
    expected = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(net(x), expected)


def test_default_has_no_residual_and_writes_no_residual_key(tmp_path: Path) -> None:
    import torch

    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig, save_rrdbnet

    torch.manual_seed(0)
    small = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)
    net = RRDBNet(small)
    torch.nn.init.zeros_(net.conv_last.weight)
    assert net.conv_last.bias is not None
    torch.nn.init.zeros_(net.conv_last.bias)
    assert net(torch.rand(1, 3, 8, 8)).abs().max() == 0  # Real-ESRGAN's forward
    save_rrdbnet(net, small, tmp_path)
    assert "residual" not in json.loads((tmp_path / "config.json").read_text())


def test_fp16_weights_load_into_float32(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig, load_rrdbnet, save_rrdbnet

    config = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, residual="bicubic")
    torch.manual_seed(0)
    net = RRDBNet(config)
    save_rrdbnet(net, config, tmp_path, dtype=torch.float16)
    assert {t.dtype for t in load_file(str(tmp_path / "model.safetensors")).values()} == {
        torch.float16
    }
    loaded, read = load_rrdbnet(tmp_path)
    assert read.residual == "bicubic"
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(loaded(x), net.half().float()(x), atol=1e-5)


def test_unknown_residual_is_refused() -> None:
    from stageflow.inference.rrdbnet import RRDBNet, RRDBNetConfig

    with pytest.raises(ValueError, match="residual"):
        RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, residual="lanczos"))
