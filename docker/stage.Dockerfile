# syntax=docker/dockerfile:1
# stageflow/stage: the base, refine and upscale stages on CPU (torch CPU + onnxruntime).
#
# One image serves all three stages; the Deployment picks one with
#   command: ["python", "-m", "stageflow.services.base"]   (or stageflow.services.refine / stageflow.services.upscale)
# Models are not in the image: a stage downloads STAGEFLOW_MODEL from
# STAGEFLOW_MODEL_REPOSITORY (a MinIO prefix) into STAGEFLOW_MODEL_CACHE at start.
# The `stageflow` command is on PATH too (model import Jobs, load tests).
#
#   docker build -f docker/stage.Dockerfile -t stageflow/stage:dev .    (or: make images)

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the virtualenv and the generated protobuf code ----------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# protoc lives in its own venv: only its output (gen/) reaches the runtime image.
RUN python -m venv /opt/tools && /opt/tools/bin/pip install grpcio-tools==1.85.1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, in layers cached until pyproject.toml or the lock change.
# torch pinned, from PyTorch's CPU index: PyPI's default torch is a multi-GB CUDA build.
COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
RUN python project_deps.py > /tmp/requirements.txt \
 && pip install -c requirements.lock -r /tmp/requirements.txt

# The code. An editable install keeps /app laid out like a checkout (defaults such
# as the orchestrator's pipelines/ resolve against it) and writes the `stageflow`
# console script; gen/ is put on sys.path by a .pth, as `make deps` does.
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

# ---- runtime: the venv and the code, nothing else --------------------------
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
COPY --from=builder /app /app
WORKDIR /app
USER 10001:10001
# gRPC, Prometheus /metrics
EXPOSE 50051 9090
# Exec form: python is PID 1 and receives SIGTERM / SIGUSR1 itself.
ENTRYPOINT ["python", "-m", "stageflow.services.base"]
