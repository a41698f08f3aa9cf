# syntax=docker/dockerfile:1
# stageflow/stage-cuda: the base, refine and upscale stages on an NVIDIA GPU.
#
# Same code and entry points as stage.Dockerfile; differences:
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

# ---- builder: the virtualenv and the generated protobuf code ----------------
FROM ${CUDA_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# protoc lives in its own venv: only its output (gen/) reaches the runtime image.
RUN python3 -m venv /opt/tools && /opt/tools/bin/pip install grpcio-tools==1.85.1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

COPY pyproject.toml requirements.lock docker/project_deps.py ./
# torch pinned, CUDA build. The lock pins the CPU build (2.13.0+cpu): drop that
# line from the constraints, the version is the same.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
 && python project_deps.py --exclude onnxruntime > /tmp/requirements.txt \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt \
      onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}
RUN if [ -n "${TENSORRT_VERSION}" ]; then pip install "tensorrt==${TENSORRT_VERSION}"; fi

# The code (see stage.Dockerfile for why an editable install).
COPY README.md ./
COPY protos ./protos
COPY pipelines ./pipelines
COPY serving ./serving
COPY inference ./inference
COPY services ./services
COPY orchestrator ./orchestrator
COPY cli ./cli
# same as `make proto`
RUN mkdir -p gen && /opt/tools/bin/python -m grpc_tools.protoc -Iprotos \
      --python_out=gen --pyi_out=gen --grpc_python_out=gen protos/stageflow/v1/*.proto
RUN pip install --no-deps -e . \
 && echo /app/gen > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stageflow-gen.pth" \
 && rm project_deps.py \
 && python -m compileall -q serving inference services orchestrator cli gen

# ---- runtime: CUDA runtime + Python, the venv and the code -----------------
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
COPY --from=builder /app /app
WORKDIR /app
USER 10001:10001
# gRPC, Prometheus /metrics
EXPOSE 50051 9090
# Exec form: python is PID 1 and receives SIGTERM / SIGUSR1 itself.
ENTRYPOINT ["python", "-m", "stageflow.services.base"]
