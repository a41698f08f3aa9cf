"""Export a model folder to ONNX: the compiled parts the backends load.

`export_onnx(src, dst)` reads a diffusers Stable Diffusion folder (it has
`model_index.json`) or an upscaler folder (its `config.json` names one of
`stageflow.inference.sr_archs`' architectures: RRDBNet, SRVGGNetCompact) and
writes the layout of `stageflow.inference.onnx.layout`, every
graph with dynamic batch, height and width.

The exporter is torch's TorchScript-based one (`dynamo=False`): it takes
seconds on the fixtures and a minute on an SD 1.5 UNet, and its
`dynamic_axes` cover the spatial sizes without export-time shape constraints.

fp16 (`fp16=True`) exports the UNet and the upscaler in half precision (the
heavy parts); the text encoder and the VAE stay float32, because SD VAEs
overflow in fp16. It is meant for GPU providers (CUDA, TensorRT): ONNX
Runtime's CPU provider lacks fp16 kernels for several ops (it fails at
session creation or runs slower than fp32). The runtime casts inputs to each
graph's own dtype, so fp16 and fp32 folders load the same way. bf16 is
refused (`stageflow.inference.precision.onnx_dtype_problem` says why).

Cold start: ONNX Runtime spends most of a real-scale session's creation
optimising the graph (~20 s of a 25-39 s SD 1.5 start here). With
`optimize=True` (the default) the export also saves each graph as ONNX
Runtime optimised it for this machine's CPU provider (`<part>.opt.onnx`,
via `SessionOptions.optimized_model_filepath`), and records the onnxruntime
version and CPU features it was made with; the runtime loads that graph
with optimisation off wherever they match, and the plain graph elsewhere.
It doubles the export's size on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stageflow.inference import precision
from stageflow.inference.onnx import layout
from stageflow.inference.repository import native_side

EXPORTER = "torch.onnx (TorchScript, dynamo=False)"
# Protobuf's hard limit is 2 GiB; keep weights outside the graph well before it.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class ExportReport:
    kind: str  # layout.KIND_SD or layout.KIND_ESRGAN
    folder: Path
    parts: tuple[str, ...]  # part names exported, e.g. ("text_encoder", "unet", ...)
    fp16_parts: tuple[str, ...]  # the parts stored in half precision
    settings: dict[str, Any]  # opset, fp16, exporter, torch/onnx versions
    fingerprint: str  # sha256 over the files' digests + settings
    seconds: float


def export_onnx(
    src: Path,
    dst: Path,
    *,
    fp16: bool = False,
    opset: int = 17,
    dtype: str | None = None,
    optimize: bool = True,
) -> ExportReport:
    """Export the model folder `src` into `dst` (absent or empty).

    `dtype` ("fp32", "fp16"; bf16 is refused) overrides `fp16` when given.

    The export is written into a scratch folder beside `dst` and renamed into
    place, so a failed export leaves no half-written model.
    """
    src, dst = Path(src), Path(dst)
    started = time.perf_counter()
    dtype = dtype or ("fp16" if fp16 else "fp32")
    problem = precision.onnx_dtype_problem(dtype)
    if problem:
        raise ValueError(problem)
    fp16 = dtype == precision.FP16
    exporter = _exporter_for(src)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty")
    dst.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "opset": opset,
        "fp16": fp16,
        "dtype": dtype,
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "onnx": _onnx_version(),
    }
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.export-") as scratch:
        out = Path(scratch) / "model"
        out.mkdir()
        kind, config, fp16_parts = exporter(src, out, fp16=fp16, opset=opset)
        if optimize:
            settings["optimized"] = save_optimized(out)
        files = layout.file_digests(out)
        manifest = layout.OnnxManifest(
            kind=kind,
            config=config,
            settings=settings,
            files=files,
            fingerprint=layout.fingerprint(files, settings),
        )
        (out / layout.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        if dst.exists():
            dst.rmdir()
        out.rename(dst)
    parts = tuple(
        p.removesuffix(".onnx")
        for p in sorted(files)
        if p.endswith(".onnx") and not layout.is_derived(p)
    )
    return ExportReport(
        kind=kind,
        folder=dst,
        parts=parts,
        fp16_parts=fp16_parts,
        settings=settings,
        fingerprint=manifest.fingerprint,
        seconds=time.perf_counter() - started,
    )


ExportResult = tuple[str, dict[str, Any], tuple[str, ...]]
# The diffusers pipelines whose parts `_export_sd` exports (one text encoder).
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")


def _exporter_for(src: Path) -> Any:
    if layout.is_onnx_folder(src):
        raise ValueError(f"{src} is already an ONNX export")
    if (src / "model_index.json").is_file():
        from stageflow.inference.sd_parts import pipeline_class

        if pipeline_class(src) not in SD_PIPELINES:
            raise ValueError(
                f"{src}: a {pipeline_class(src)} folder; the ONNX export covers Stable "
                "Diffusion 1.x/2.x folders only (SDXL runs on the torch backend)"
            )
        return _export_sd
    if (src / "config.json").is_file():
        return _export_esrgan
    raise ValueError(
        f"{src}: not a model folder this exporter knows: expected a diffusers Stable "
        "Diffusion folder (model_index.json) or an upscaler (config.json: RRDBNet, SRVGGNetCompact)"
    )


# --- Stable Diffusion ---------------------------------------------------------------


class _TextEncoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input_ids, attention_mask=None)[0]
        return out


class _Unet(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> Any:
        return self.model(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> Any:
        # The posterior's moments (mean, logvar); the seeded draw stays in our loop.
        return self.vae.encode(image).latent_dist.parameters


class _VaeDecoder(nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> Any:
        return self.vae.decode(latents, return_dict=False)[0]


def _export_sd(src: Path, out: Path, *, fp16: bool, opset: int) -> ExportResult:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from stageflow.inference.sd_parts import quiet_hub_progress

    tokenizer = CLIPTokenizer.from_pretrained(src / "tokenizer")
    with quiet_hub_progress():
        text_encoder: Any = CLIPTextModel.from_pretrained(
            src / "text_encoder", dtype=torch.float32
        ).eval()
    unet_dtype = torch.float16 if fp16 else torch.float32
    unet: Any = UNet2DConditionModel.from_pretrained(
        src / "unet", low_cpu_mem_usage=False, dtype=unet_dtype
    ).eval()
    vae: Any = AutoencoderKL.from_pretrained(
        src / "vae", low_cpu_mem_usage=False, dtype=torch.float32
    ).eval()
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"{src}: UNet takes {unet.config.in_channels} channels, VAE latents have "
            f"{vae.config.latent_channels}: inpainting-specific UNets are not supported"
        )
    channels = int(vae.config.latent_channels)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = len(unet.config.block_out_channels)
    # The smallest latent every UNet level halves cleanly; export traces at twice it.
    latent = 2 * 2 ** (levels - 1)
    max_len = int(tokenizer.model_max_length)
    hidden = int(text_encoder.config.hidden_size)

    batch = {0: "batch"}
    image_axes = {0: "batch", 2: "height", 3: "width"}
    latent_axes = {0: "batch", 2: "latent_height", 3: "latent_width"}
    ids = torch.zeros((1, max_len), dtype=torch.int64)
    _export(
        _TextEncoder(text_encoder),
        (ids,),
        out,
        layout.TEXT_ENCODER,
        opset,
        inputs={"input_ids": batch},
        outputs={"last_hidden_state": batch},
    )
    _export(
        _Unet(unet),
        (
            torch.randn(2, channels, latent, latent, dtype=unet_dtype),
            torch.tensor([999.0], dtype=unet_dtype),
            torch.randn(2, max_len, hidden, dtype=unet_dtype),
        ),
        out,
        layout.UNET,
        opset,
        inputs={"sample": latent_axes, "timestep": {}, "encoder_hidden_states": batch},
        outputs={"noise": latent_axes},
    )
    side = latent * vae_factor
    _export(
        _VaeEncoder(vae),
        (torch.randn(1, 3, side, side),),
        out,
        layout.VAE_ENCODER,
        opset,
        inputs={"image": image_axes},
        outputs={"moments": latent_axes},
    )
    _export(
        _VaeDecoder(vae),
        (torch.randn(1, channels, latent, latent),),
        out,
        layout.VAE_DECODER,
        opset,
        inputs={"latents": latent_axes},
        outputs={"image": image_axes},
    )
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(src / sub, out / sub)
    config = {
        "latent_channels": channels,
        "scaling_factor": float(vae.config.scaling_factor),
        "vae_scale_factor": vae_factor,
        "unet_levels": levels,
        "max_token_length": max_len,
        "text_hidden_size": hidden,
        "vae_base_channels": int(vae.config.block_out_channels[0]),
    }
    # The size the UNet was trained at: the export's default size and warm-up
    # size, as the diffusers folder's configs say for torch.
    native = native_side(src)
    if native is not None:
        config["native_side"] = native
    return layout.KIND_SD, config, (layout.UNET,) if fp16 else ()


def save_optimized(out: Path) -> dict[str, Any]:
    """Save every `<part>.onnx` in `out` as ONNX Runtime's CPU provider optimises
    it (`<part>.opt.onnx`, weights over the protobuf limit in `.opt.onnx.data`);
    returns what the runtime checks before using them."""
    from stageflow.inference.onnx import runtime

    for graph in sorted(out.glob("*.onnx")):
        if graph.name.endswith(layout.OPTIMIZED_SUFFIX):
            continue
        target = graph.with_name(graph.name.removesuffix(".onnx") + layout.OPTIMIZED_SUFFIX)
        runtime.save_optimized_graph(graph, target)
    return runtime.optimized_signature()


# --- ESRGAN ---------------------------------------------------------------------------


def _export_esrgan(src: Path, out: Path, *, fp16: bool, opset: int) -> ExportResult:
    from stageflow.inference.sr_archs import load_upscaler, read_config

    net, config = load_upscaler(src)
    arch, _ = read_config(src)
    dtype = torch.float16 if fp16 else torch.float32
    axes = {0: "batch", 2: "height", 3: "width"}
    _export(
        net.to(dtype),
        (torch.rand(1, 3, 16, 16, dtype=dtype),),
        out,
        layout.UPSCALER,
        opset,
        inputs={"image": axes},
        outputs={"upscaled": axes},
    )
    cfg = {"architecture": arch.name, **dataclasses.asdict(config)}
    return layout.KIND_ESRGAN, cfg, (layout.UPSCALER,) if fp16 else ()


# --- the one export call --------------------------------------------------------------


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    out: Path,
    name: str,
    opset: int,
    *,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
) -> None:
    """Trace `module` to `<out>/<name>.onnx`; weights over the protobuf limit go to
    one `<name>.onnx.data` file beside it."""
    target = out / f"{name}.onnx"
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-") as scratch:
        traced = Path(scratch) / target.name
        try:
            with torch.no_grad(), _quiet_export():
                torch.onnx.export(
                    module.eval(),
                    args,
                    str(traced),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_axes={k: v for k, v in {**inputs, **outputs}.items() if v},
                    do_constant_folding=True,
                )
        except Exception as err:
            dtype = args[0].dtype
            raise RuntimeError(f"exporting {name} ({dtype}) to ONNX failed: {err}") from err
        _store(traced, target)


def _store(traced: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(traced), load_external_data=False)
    external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )
    if not external and traced.stat().st_size < EXTERNAL_DATA_BYTES:
        shutil.move(traced, target)
        return
    # The exporter scatters large weights over one file per tensor; gather them.
    onnx.load_external_data_for_model(model, str(traced.parent))
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
    )


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # Tracer warnings about Python-side shape checks in diffusers are expected:
    # the dynamic axes make those checks graph-independent for our inputs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # "Constant folding - Only steps=1 ...": a missed optimisation, not an error.
        warnings.simplefilter("ignore", UserWarning)
        yield


def _onnx_version() -> str:
    import onnx

    return str(onnx.__version__)


def main(argv: list[str] | None = None) -> None:
    """`python -m stageflow.inference.onnx.export SRC DST [--fp16] [--opset N]`."""
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    report = export_onnx(args.src, args.dst, fp16=args.fp16, opset=args.opset)
    print(json.dumps(asdict(report), default=str, indent=2))


if __name__ == "__main__":
    main()
