# syntax=docker/dockerfile:1
# stageflow/gateway: the HTTP gateway (FastAPI on uvicorn) in front of the orchestrator.
#
# The `gateway` extra's dependencies: the serving runtime, FastAPI, uvicorn,
# python-multipart and Pillow (uploads are checked and images converted
# here), no torch, diffusers, transformers, onnxruntime nor numpy;
# `python -m stageflow.gateway` imports none of them
# (tests/deploy/test_dockerfiles.py checks that import graph against the extra).
# The workspace's htmx.min.js comes in with gateway/ from the context's
# gateway/workspace/static/vendor/ (`make images` runs `make workspace` first);
# without it the workspace still works, as plain forms (the gateway logs so).
#
#   docker build -f docker/gateway.Dockerfile -t stageflow/gateway:dev .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- wheel: the project, built from the source (see stage.Dockerfile) -------
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
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN python project_deps.py --extra gateway > requirements.txt \
 && pip install -c requirements.lock -r requirements.txt

COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/stageflow-*.whl

# ---- runtime: the virtualenv, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 stageflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin stageflow
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
# HTTP (or HTTPS with a certificate)
EXPOSE 8080
# Exec form: python is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["python", "-m", "stageflow.gateway"]
