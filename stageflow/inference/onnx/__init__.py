"""ONNX export of our model folders and the ONNX Runtime backend.

`stageflow.inference.onnx.export` needs torch (and diffusers for Stable Diffusion
folders); `stageflow.inference.onnx.runtime` needs only onnxruntime, numpy, torch for the
loop's tensors, and a tokenizer: an ONNX-only stage never imports diffusers.
"""
