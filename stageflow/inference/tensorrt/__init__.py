"""TensorRT backend: engines built from our ONNX exports, cached, run by tensor name.

Written against TensorRT 10's public Python API (`tensorrt.Builder`,
`OnnxParser`, optimization profiles, `execute_async_v3`). TensorRT cannot be
installed from the registries this project's machines reach, so this backend
is exercised only by tests/gpu/, which skip with a reason where the library
is absent; requesting it there is a clear `BackendUnavailable` error.
"""
