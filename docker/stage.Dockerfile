# syntax=docker/dockerfile:1
# stageflow/stage: the base, refine and upscale stages on CPU (torch CPU + onnxruntime).
#
# One image serves all three stages; the Deployment picks one with
#   command: ["python", "-m", "stageflow.services.base"]   (or stageflow.services.refine / stageflow.services.upscale)
# Models are not in the image: a stage downloads STAGEFLOW_MODEL from
# STAGEFLOW_MODEL_REPOSITORY (a MinIO prefix) into STAGEFLOW_MODEL_CACHE at start.
# The `stageflow` command is on PATH too (model import Jobs, load tests).
#
# The image installs the project's wheel, built here as `pip wheel .` builds it
# anywhere: no Makefile, no protoc (the generated code is committed in
# stageflow/v1), no editable install, no source tree in the runtime image.
#
#   docker build -f docker/stage.Dockerfile -t stageflow/stage:dev .    (or: make images)

ARG PYTHON_IMAGE=python:3.11-slim

# ---- wheel: the project, built from the source --------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# stageflow/orchestrator, stageflow/services and stageflow/pipelines link to the
# top-level folders of those names: the build follows the links.
COPY pyproject.toml README.md ./
COPY stageflow ./stageflow
COPY orchestrator ./orchestrator
COPY services ./services
COPY gateway ./gateway
COPY pipelines ./pipelines
RUN pip wheel --no-deps . -w /wheels

# ---- builder: the virtualenv, dependencies first, then the wheel -----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies in layers cached until pyproject.toml or the lock change: the
# `stage` extra's requirements, read from pyproject.toml by project_deps.py.
# torch pinned, from PyTorch's CPU index: PyPI's default torch is a multi-GB CUDA build.
COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
RUN python project_deps.py --extra stage > requirements.txt \
 && pip install -c requirements.lock -r requirements.txt

# The project: its wheel, the dependencies being in place (pip compiles the bytecode).
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/stageflow-*.whl

# ---- runtime: the virtualenv, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Bytecode is compiled in the builder; the root filesystem is read-only in the pod.
# HF_HUB_OFFLINE: nothing downloads weights from a hub at run time.
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
