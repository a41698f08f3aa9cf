"""export_onnx: folder detection, fingerprints, fp16, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stageflow.inference.onnx import layout

if TYPE_CHECKING:
    from stageflow.inference.onnx.export import ExportReport


def test_manifest_records_settings_digests_and_fingerprint(sd_export: ExportReport) -> None:
    raw = json.loads((sd_export.folder / layout.MANIFEST).read_text())
    assert raw["kind"] == layout.KIND_SD == sd_export.kind
    assert raw["fingerprint"] == sd_export.fingerprint
    assert raw["config"] == {
        "latent_channels": 4,
        "scaling_factor": pytest.approx(0.18215),
        "vae_scale_factor": 8,
        "unet_levels": 2,
        "max_token_length": 77,
        "text_hidden_size": 32,
        "vae_base_channels": 8,
        "native_side": 128,  # the tiny fixture's UNet sample_size 16 x the VAE's 8
    }
    assert {"unet.onnx", "tokenizer/vocab.json", "scheduler/scheduler_config.json"} <= set(
        raw["files"]
    )
    assert set(raw["settings"]) == {
        "opset",
        "fp16",
        "dtype",
        "exporter",
        "torch",
        "onnx",
        "optimized",
    }
    # The compile-time optimised graphs are part of the export, verified like the rest.
    assert {f"{part}.opt.onnx" for part in layout.SD_PARTS} <= set(raw["files"])
    assert layout.read_manifest(sd_export.folder).fingerprint == sd_export.fingerprint


def test_same_export_same_fingerprint_other_settings_another(
    esrgan_folder: Path, esrgan_export: ExportReport, tmp_path: Path
) -> None:
    from stageflow.inference.onnx.export import export_onnx

    again = export_onnx(esrgan_folder, tmp_path / "again")
    assert again.fingerprint == esrgan_export.fingerprint
    other = export_onnx(esrgan_folder, tmp_path / "opset18", opset=18)
    assert other.fingerprint != esrgan_export.fingerprint


def test_fp16_upscaler_exports_and_runs(esrgan_folder: Path, tmp_path: Path) -> None:
    import torch

    from stageflow.inference.onnx.export import export_onnx
    from stageflow.inference.onnx.runtime import load_onnx_upscaler
    from stageflow.inference.rrdbnet import load_rrdbnet

    report = export_onnx(esrgan_folder, tmp_path / "fp16", fp16=True)
    assert report.fp16_parts == ("upscaler",) and report.settings["fp16"] is True
    net, _ = load_onnx_upscaler(report.folder, threads=1)
    reference, _ = load_rrdbnet(esrgan_folder)
    image = torch.rand((1, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out, expected = net(image), reference(image)
    # Half precision: about 1e-3, where fp32 agrees to 1e-6.
    assert out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 2e-2


def test_refuses_unknown_folders_non_empty_targets_and_exports(
    sd_export: ExportReport, esrgan_folder: Path, tmp_path: Path
) -> None:
    from stageflow.inference.onnx.export import export_onnx

    with pytest.raises(ValueError, match=r"model_index\.json"):
        export_onnx(tmp_path, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        export_onnx(esrgan_folder, tmp_path / "full")
    with pytest.raises(ValueError, match="already an ONNX export"):
        export_onnx(sd_export.folder, tmp_path / "again")
    # A failed export leaves nothing behind.
    assert not (tmp_path / "out").exists()


def test_large_weights_go_to_one_external_data_file(
    esrgan_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SD 1.5 UNet (3.4 GB) is past protobuf's 2 GiB: weights must live beside it."""
    import torch

    from stageflow.inference.onnx import export
    from stageflow.inference.onnx.export import export_onnx
    from stageflow.inference.onnx.runtime import load_onnx_upscaler
    from stageflow.inference.rrdbnet import load_rrdbnet

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    report = export_onnx(esrgan_folder, tmp_path / "external")
    names = sorted(p.name for p in report.folder.iterdir())
    assert names == [
        "onnx_model.json",
        "upscaler.onnx",
        "upscaler.onnx.data",
        "upscaler.opt.onnx",
        "upscaler.opt.onnx.data",
    ]
    assert "upscaler.onnx.data" in layout.read_manifest(report.folder).files
    net, _ = load_onnx_upscaler(report.folder, threads=1)
    reference, _ = load_rrdbnet(esrgan_folder)
    image = torch.rand((1, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (net(image) - reference(image)).abs().max().item() < 1e-4


def test_the_optimised_graph_is_served_where_it_was_made_and_computes_the_same(
    esrgan_export: ExportReport,
) -> None:
    """Cold start: the compile-time optimised graph loads with optimisation off on
    the machine it was made for, and gives exactly the plain graph's output."""
    import onnxruntime as ort
    import torch

    from stageflow.inference.onnx import runtime

    manifest = layout.read_manifest(esrgan_export.folder)
    assert manifest.optimized == runtime.optimized_signature()
    providers = runtime.resolve_providers([])
    part = runtime.open_part(manifest, esrgan_export.folder, layout.UPSCALER, providers, 1)
    assert part.session._model_path.endswith("upscaler.opt.onnx")
    level = part.session.get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = runtime.OrtPart(manifest.part(esrgan_export.folder, layout.UPSCALER), providers, 1)
    image = torch.rand((1, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(part(image), plain(image))


def test_an_optimised_graph_from_another_machine_is_not_used(
    esrgan_export: ExportReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stageflow.inference.onnx import runtime

    manifest = layout.read_manifest(esrgan_export.folder)
    providers = runtime.resolve_providers([])
    assert runtime.uses_optimized(manifest, providers)
    other = {**runtime.optimized_signature(), "cpu_features": "avx2,fma"}
    monkeypatch.setattr(runtime, "optimized_signature", lambda: other)
    assert not runtime.uses_optimized(manifest, providers)
    part = runtime.open_part(manifest, esrgan_export.folder, layout.UPSCALER, providers, 1)
    assert part.session._model_path.endswith("upscaler.onnx")


def test_bf16_export_is_refused_with_the_reason(esrgan_folder: Path, tmp_path: Path) -> None:
    from stageflow.inference.onnx.export import export_onnx

    with pytest.raises(ValueError, match=r"bf16 cannot be exported to ONNX.*torch backend"):
        export_onnx(esrgan_folder, tmp_path / "bf16", dtype="bf16")
    assert not (tmp_path / "bf16").exists()


def test_a_compiled_model_runs_in_its_exports_dtype_and_refuses_another(
    sd_export: ExportReport,
) -> None:
    from stageflow.core.errors import FailedPrecondition
    from stageflow.inference import registry

    model = registry.create_model("sd-txt2img", sd_export.folder, backend="onnxruntime")
    model.load()
    try:
        identity = model.describe().identity
        # An export's fingerprint already covers its dtype: it is the manifest's own.
        assert (identity.dtype, identity.fingerprint) == ("fp32", sd_export.fingerprint)
    finally:
        model.unload()
    half = registry.create_model(
        "sd-txt2img", sd_export.folder, backend="onnxruntime", dtype="fp16"
    )
    with pytest.raises(FailedPrecondition, match="fp32 export; dtype fp16 needs a fp16 export"):
        half.load()


def test_auto_on_a_compiled_model_is_its_exports_dtype(sd_export: ExportReport) -> None:
    """dtype=auto never asks the CPU for an export: it runs in what it was exported in."""
    from stageflow.inference import registry

    model = registry.create_model(
        "sd-txt2img", sd_export.folder, backend="onnxruntime", dtype="auto"
    )
    model.load()
    try:
        identity = model.describe().identity
    finally:
        model.unload()
    assert (identity.dtype, identity.dtype_setting) == ("fp32", "auto")
    assert identity.dtype_reason == "auto: fp32, the export's own dtype"
    assert identity.fingerprint == sd_export.fingerprint
    assert identity.cpu_features == ()


def test_the_export_keeps_the_native_size_for_defaults_and_warm_up(
    sd_folder: Path, sd_export: ExportReport
) -> None:
    from stageflow.inference.registry import create_model
    from stageflow.inference.repository import native_side

    # No unet/ and vae/ configs in an export: the manifest carries the size,
    # or a request without a size (and the warm-up) would get another one.
    assert native_side(sd_export.folder) == native_side(sd_folder) is not None
    model = create_model("sd-txt2img", sd_export.folder, backend="onnxruntime", torch_threads=1)
    model.load()
    try:
        defaults = model.describe().param_defaults
        assert defaults["width"] == defaults["height"] == native_side(sd_folder)
    finally:
        model.unload()
