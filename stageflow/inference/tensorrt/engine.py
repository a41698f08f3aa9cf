"""Build TensorRT engines from ONNX graphs, with optimization profiles and a cache.

An engine is specific to the graph, the shapes it was optimized for, the
TensorRT version and the GPU, so the cache key hashes all four (plus the
precision flag). A hit deserializes the plan in seconds; a miss builds it
(minutes for an SD UNet) and stores it atomically for the next process.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# (min, opt, max) shapes of one input
ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

WORKSPACE_BYTES = 4 << 30


def default_cache_dir() -> Path:
    """Where engines are cached when the caller names no folder (a stage names
    StageSettings.trt_cache, STAGEFLOW_TRT_CACHE)."""
    return Path.home() / ".cache" / "stageflow" / "tensorrt"


@dataclass(frozen=True)
class Profile:
    """Input name -> (min, opt, max) shape; one TensorRT optimization profile."""

    shapes: Mapping[str, ShapeRange]

    def as_json(self) -> str:
        return json.dumps({k: [list(s) for s in v] for k, v in self.shapes.items()}, sort_keys=True)


def gpu_name() -> str:
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


def cache_key(onnx_digest: str, profile: Profile, fp16: bool, trt_version: str, gpu: str) -> str:
    body = json.dumps(
        {
            "onnx": onnx_digest,
            "profile": profile.as_json(),
            "fp16": fp16,
            "tensorrt": trt_version,
            "gpu": gpu,
        },
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def build_plan(onnx_path: Path, profile: Profile, fp16: bool) -> bytes:
    """Parse the ONNX graph and build a serialized engine for `profile`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves `<part>.onnx.data` external weights beside the file.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}")
    return bytes(plan)


def load_engine(
    onnx_path: Path,
    onnx_digest: str,
    profile: Profile,
    *,
    fp16: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Any, bool]:
    """The engine for `onnx_path` under `profile`; returns (engine, built_now)."""
    import tensorrt as trt

    cache = Path(cache_dir or default_cache_dir())
    key = cache_key(onnx_digest, profile, fp16, trt.__version__, gpu_name())
    plan_path = cache / f"{onnx_path.stem}-{key[:32]}.plan"
    built = False
    if plan_path.is_file():
        plan = plan_path.read_bytes()
    else:
        plan = build_plan(onnx_path, profile, fp16)
        cache.mkdir(parents=True, exist_ok=True)
        scratch = plan_path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(plan)
        scratch.replace(plan_path)
        built = True
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError(f"{plan_path}: TensorRT could not deserialize the cached engine")
    return engine, built


_TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
}


class EngineRunner:
    """Runs one engine: torch tensors bound by tensor name, one float32 output.

    An execution context is not thread-safe: calls are serialized.
    """

    def __init__(self, engine: Any, device: torch.device) -> None:
        import tensorrt as trt

        self.engine = engine
        self.device = device
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        outputs = [n for n in names if not is_input[n]]
        if len(outputs) != 1:
            raise RuntimeError(f"expected one output tensor, engine has {outputs}")
        self.output = outputs[0]
        self.dtypes = {n: _TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in names}
        self._lock = threading.Lock()

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.cuda.device(self.device):
            bound = []
            for name, tensor in zip(self.inputs, tensors, strict=True):
                t = tensor.to(self.device, self.dtypes[name]).contiguous()
                bound.append(t)  # keep alive until the engine has run
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            shape = tuple(self.context.get_tensor_shape(self.output))
            out = torch.empty(shape, dtype=self.dtypes[self.output], device=self.device)
            self.context.set_tensor_address(self.output, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            return out.float()
