"""Each exported part against its torch original, at several sizes and batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.unit.onnx.conftest import PART_ATOL

if TYPE_CHECKING:
    import torch

    from stageflow.inference.onnx.export import ExportReport
    from stageflow.inference.sd_parts import DiffusionParts

# Pixel sides: 32/64/96 px are latents of 4/8/12, each a multiple of the
# 2^(levels - 1) = 2 the tiny UNet needs.
SIDES = [(32, 32), (64, 96), (96, 64)]
BATCHES = [1, 2, 4]


@pytest.fixture(scope="module")
def torch_parts(sd_folder: Path) -> DiffusionParts:
    from stageflow.inference.sd_parts import load_torch_parts

    return load_torch_parts(sd_folder)


@pytest.fixture(scope="module")
def ort_parts(sd_export: ExportReport) -> DiffusionParts:
    from stageflow.inference.onnx.runtime import load_onnx_parts

    return load_onnx_parts(sd_export.folder, threads=1)


def close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    import torch

    assert ours.shape == reference.shape
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() <= PART_ATOL


def test_export_report_describes_the_folder(sd_export: ExportReport) -> None:
    assert sd_export.parts == ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    files = {p.name for p in sd_export.folder.iterdir()}
    assert {"onnx_model.json", "tokenizer", "scheduler", "unet.onnx"} <= files
    assert sd_export.settings["opset"] == 17 and sd_export.settings["fp16"] is False


def test_config_matches_the_torch_parts(
    torch_parts: DiffusionParts, ort_parts: DiffusionParts
) -> None:
    for field in ("latent_channels", "scaling_factor", "vae_scale_factor", "unet_levels"):
        assert getattr(ort_parts, field) == getattr(torch_parts, field)


@pytest.mark.parametrize("prompt", ["", "epic game hero portrait, golden light"])
def test_tokenize_and_text_encoder(
    torch_parts: DiffusionParts, ort_parts: DiffusionParts, prompt: str
) -> None:
    import torch

    ids = torch_parts.tokenize(prompt)
    assert torch.equal(ort_parts.tokenize(prompt), ids)
    batch = torch.cat([ids, torch_parts.tokenize("blurry")])
    with torch.inference_mode():
        close(ort_parts.encode_text(batch), torch_parts.encode_text(batch))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("height", "width"), SIDES)
def test_unet(
    torch_parts: DiffusionParts, ort_parts: DiffusionParts, batch: int, height: int, width: int
) -> None:
    import torch

    from stageflow.inference.sd_parts import Conditioning

    gen = torch.Generator().manual_seed(batch * height + width)
    f = torch_parts.vae_scale_factor
    sample = torch.randn((batch, 4, height // f, width // f), generator=gen)
    text = torch.randn((batch, 77, 32), generator=gen)
    for t in (torch.tensor(981), torch.tensor(1)):
        with torch.inference_mode():
            cond = Conditioning(text)
            close(
                ort_parts.predict_noise(sample, t, cond), torch_parts.predict_noise(sample, t, cond)
            )


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("height", "width"), SIDES)
def test_vae_encoder_and_decoder(
    torch_parts: DiffusionParts, ort_parts: DiffusionParts, batch: int, height: int, width: int
) -> None:
    import torch

    gen = torch.Generator().manual_seed(height + width)
    image = torch.rand((batch, 3, height, width), generator=gen) * 2 - 1
    with torch.inference_mode():
        moments = torch_parts.encode_image(image)
        close(ort_parts.encode_image(image), moments)
        latents = moments[:, :4]
        close(ort_parts.decode_latents(latents), torch_parts.decode_latents(latents))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("height", "width"), [(8, 8), (13, 21), (32, 24)])
def test_upscaler(
    esrgan_folder: Path, esrgan_export: ExportReport, batch: int, height: int, width: int
) -> None:
    import torch

    from stageflow.inference.onnx.runtime import load_onnx_upscaler
    from stageflow.inference.rrdbnet import load_rrdbnet

    net, config = load_rrdbnet(esrgan_folder)
    ort_net, scale = load_onnx_upscaler(esrgan_export.folder, threads=1)
    assert scale == config.scale == 4
    image = torch.rand((batch, 3, height, width), generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        out = ort_net(image)
        close(out, net(image))
    assert out.shape == (batch, 3, 4 * height, 4 * width)


def test_the_cpu_provider_runs_the_unet_one_row_per_call(sd_export: ExportReport) -> None:
    """A guided (or batched) UNet call on the CPU provider is one graph call per
    row (runtime.CPU_UNET_ROWS: half the activations' memory), and equals the
    whole batch in one call up to the kernels' rounding."""
    import torch

    from stageflow.inference.onnx import layout, runtime
    from stageflow.inference.sd_parts import Conditioning

    manifest = layout.read_manifest(sd_export.folder, verify=False)
    graph = runtime.open_part(
        manifest, sd_export.folder, layout.UNET, list(runtime.DEFAULT_PROVIDERS), 1
    )
    rows_seen: list[int] = []

    def counted(*tensors: torch.Tensor) -> torch.Tensor:
        rows_seen.append(int(tensors[0].shape[0]))
        return graph(*tensors)

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 4, 8, 8, generator=gen)
    text = torch.randn(4, 77, int(manifest.config["text_hidden_size"]), generator=gen)
    cond = Conditioning(text=text)
    t = torch.tensor(500)
    per_row = runtime.unet_caller(counted, rows=runtime.CPU_UNET_ROWS)(sample, t, cond)
    assert rows_seen == [1, 1, 1, 1]
    rows_seen.clear()
    whole = runtime.unet_caller(counted, rows=0)(sample, t, cond)
    assert rows_seen == [4]
    assert per_row.shape == whole.shape
    torch.testing.assert_close(per_row, whole, atol=1e-5, rtol=1e-5)
    # load_onnx_parts wires it: the parts' predict_noise takes one row per call.
    parts = runtime.load_onnx_parts(sd_export.folder, threads=1)
    torch.testing.assert_close(parts.predict_noise(sample, t, cond), whole, atol=1e-5, rtol=1e-5)
