"""Choosing a backend and execution providers: clear errors, never a silent fall-back."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stageflow.core.errors import FailedPrecondition
from stageflow.inference.backends import BackendUnavailable
from stageflow.inference.base import LocalModel
from stageflow.inference.registry import create_model

if TYPE_CHECKING:
    from stageflow.inference.onnx.export import ExportReport


def test_default_and_aliases_resolve_to_cpu() -> None:
    from stageflow.inference.onnx.runtime import resolve_providers

    assert resolve_providers([]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("asked", "full"),
    [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"), ("npu", "npu")],
)
def test_missing_provider_is_a_clear_error(
    esrgan_export: ExportReport, asked: str, full: str
) -> None:
    import onnxruntime as ort

    from stageflow.inference.onnx.runtime import ProviderUnavailable

    if full in ort.get_available_providers():
        pytest.skip(f"{full} is installed here")
    model = create_model("esrgan", esrgan_export.folder, backend="onnxruntime", providers=[asked])
    with pytest.raises(ProviderUnavailable) as err:
        model.load()
    message = str(err.value)
    assert full in message and "CPUExecutionProvider" in message  # asked for, and available
    assert err.value.code == "FAILED_PRECONDITION"
    assert isinstance(model, LocalModel) and not model.loaded


def test_session_that_drops_a_provider_is_refused(
    esrgan_export: ExportReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime keeps going on CPU when, say, CUDA libraries fail to load."""
    import onnxruntime as ort

    from stageflow.inference.onnx.runtime import ProviderUnavailable, create_session

    class CpuOnlySession:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", CpuOnlySession)
    with pytest.raises(ProviderUnavailable, match=r"CUDAExecutionProvider.*silently"):
        create_session(
            esrgan_export.folder / "upscaler.onnx",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        )


def test_providers_for_the_torch_backend_are_refused(esrgan_export: ExportReport) -> None:
    with pytest.raises(ValueError, match="providers apply to the onnxruntime backend"):
        create_model("esrgan", esrgan_export.folder, providers=["cuda"])


def test_unknown_backend_names_the_known_ones(esrgan_export: ExportReport) -> None:
    with pytest.raises(ValueError, match="onnxruntime, tensorrt, torch"):
        create_model("esrgan", esrgan_export.folder, backend="openvino")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_tensorrt_without_the_library_is_a_clear_error(sd_export: ExportReport) -> None:
    model = create_model("sd-txt2img", sd_export.folder, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="'tensorrt' Python package"):
        model.load()


def test_onnx_backend_on_a_torch_folder_says_export_first(esrgan_folder: Path) -> None:
    model = create_model("esrgan", esrgan_folder, backend="onnxruntime")
    with pytest.raises(FailedPrecondition, match="not an ONNX export"):
        model.load()


def test_corrupt_export_fails_to_load_naming_the_file(
    sd_export: ExportReport, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sd_export.folder, broken)
    with (broken / "unet.onnx").open("r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 64)
    model = create_model("sd-txt2img", broken, backend="onnxruntime")
    with pytest.raises(FailedPrecondition, match=r"unet\.onnx"):
        model.load()
    assert isinstance(model, LocalModel) and not model.loaded


def test_threads_are_pinned_in_the_session(esrgan_export: ExportReport) -> None:
    from stageflow.inference.onnx import runtime
    from stageflow.inference.onnx.runtime import create_session

    session = create_session(esrgan_export.folder / "upscaler.onnx", ["CPUExecutionProvider"], 1)
    assert session.get_session_options().intra_op_num_threads == 1
    assert runtime.PROVIDER_ALIASES["cuda"] == "CUDAExecutionProvider"
