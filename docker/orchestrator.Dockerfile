# syntax=docker/dockerfile:1
# stageflow/orchestrator: the job orchestrator and the `stageflow` client command.
#
# No model stack: `python -m orchestrator` imports neither torch nor diffusers,
# transformers, onnxruntime, numpy nor Pillow (tests/deploy/test_dockerfiles.py
# checks that import graph against STAGE_ONLY_DEPS below). The `stageflow` command
# here can submit and watch jobs and load-test txt2img or the orchestrator; model
# import/compile, loadtest of refine/upscale and --plot need the stage image.
#
#   docker build -f docker/orchestrator.Dockerfile -t stageflow/orchestrator:dev .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the virtualenv and the generated protobuf code ----------------
FROM ${PYTHON_IMAGE} AS builder
ARG STAGE_ONLY_DEPS="torch diffusers transformers safetensors numpy pillow rapidocr onnxruntime onnx onnxscript"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# protoc lives in its own venv: only its output (gen/) reaches the runtime image.
RUN python -m venv /opt/tools && /opt/tools/bin/pip install grpcio-tools==1.85.1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN python project_deps.py --exclude ${STAGE_ONLY_DEPS} > /tmp/requirements.txt \
 && pip install -c requirements.lock -r /tmp/requirements.txt

# The code (see stage.Dockerfile for why an editable install). inference/ comes
# along because cli/ names it in lazily imported commands; it is never imported
# by the orchestrator.
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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 stageflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin stageflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app
USER 10001:10001
# gRPC, Prometheus /metrics
EXPOSE 50051 9090
# Exec form: python is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["python", "-m", "stageflow.orchestrator"]
