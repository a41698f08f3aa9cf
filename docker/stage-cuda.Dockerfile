# syntax=docker/dockerfile:1
# stageflow/stage-cuda: the base, refine and upscale stages on an NVIDIA GPU.
#
# Same wheel and entry points as stage.Dockerfile; differences:
# - base image: NVIDIA's CUDA runtime with cuDNN (what onnxruntime-gpu's CUDA
#   execution provider loads); its Python is Ubuntu 24.04's 3.12;
# - torch==2.13.0 from PyTorch's CUDA index (TORCH_INDEX_URL), for the torch
#   backend on STAGEFLOW_DEVICE=cuda:0;
# - onnxruntime-gpu (pinned) instead of onnxruntime: STAGEFLOW_PROVIDERS=cuda;
# - TensorRT only when built with --build-arg TENSORRT_VERSION=10.x.y.z (pip's
#   `tensorrt` wheel). UNTESTED: no Docker engine, GPU or TensorRT where stageflow
#   is developed; this file has never been built.
#
#   docker build -f docker/stage-cuda.Dockerfile -t stageflow/stage-cuda:dev .
#   docker build -f docker/stage-cuda.Dockerfile --build-arg TENSORRT_VERSION=10.16.1.11 ...

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim

# ---- wheel: the project, built from the source (see stage.Dockerfile) -------
# A pure-Python wheel: any Python the project supports builds the same one.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stageflow ./stageflow
COPY orchestrator ./orchestrator
COPY services ./services
COPY gateway ./gateway
COPY pipelines ./pipelines
RUN pip wheel --no-deps . -w /wheels

# ---- builder: the virtualenv, dependencies first, then the wheel -----------
FROM ${CUDA_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

COPY pyproject.toml requirements.lock docker/project_deps.py ./
# torch pinned, CUDA build. The lock pins the CPU build (2.13.0+cpu): drop that
# line from the constraints, the version is the same.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
RUN grep -v '^torch==' requirements.lock > constraints.txt \
 && python project_deps.py --extra stage --exclude onnxruntime > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt \
      onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}
RUN if [ -n "${TENSORRT_VERSION}" ]; then pip install "tensorrt==${TENSORRT_VERSION}"; fi

COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/stageflow-*.whl

# ---- runtime: CUDA runtime + Python, the virtualenv, nothing else ----------
FROM ${CUDA_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1
RUN groupadd --gid 10001 stageflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin stageflow
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
# gRPC, Prometheus /metrics
EXPOSE 50051 9090
# Exec form: python is PID 1 and receives SIGTERM / SIGUSR1 itself.
ENTRYPOINT ["python", "-m", "stageflow.services.base"]
