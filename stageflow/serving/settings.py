"""The settings of serving processes (built on `stageflow.core.settings`).

`CommonSettings` is what every server process needs; `StageSettings` adds a
stage's model and data-plane limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from stageflow.core.settings import StageflowSettings, load_settings
from stageflow.core.storage import DEFAULT_S3_RETRY_SECONDS, parse_store_url
from stageflow.serving.stores import InstrumentedStore, open_store

MiB = 1024 * 1024


class CommonSettings(StageflowSettings):
    """What every stageflow process needs."""

    host: str = Field(default="127.0.0.1", description="Address to listen on; 0.0.0.0 for all.")
    port: int = Field(
        default=0, ge=0, le=65535, description="Port to listen on; 0 picks a free one."
    )
    port_file: Path | None = Field(
        default=None,
        description="Write the bound port here (atomically) once listening, so a "
        "launcher can find a port-0 server; removed on exit.",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_json: bool = Field(
        default=False, description="JSON lines on stderr instead of console text."
    )
    grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long in-flight calls may run before they are "
        "cancelled; keep it below the pod's terminationGracePeriodSeconds.",
    )
    max_message_bytes: int = Field(
        default=16 * MiB, gt=0, description="Largest gRPC message sent or received, in bytes."
    )
    store_url: str = Field(
        default="var/store",
        description="Object store: a folder path (relative to the working directory), "
        "file:///abs/path, or s3://bucket?endpoint=http://host:port.",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate: serve gRPC over TLS with it (and present it as the "
        "client certificate on this process's own gRPC calls). Needs tls_key.",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: with tls_cert, require client certificates it signed "
        "(mutual TLS); also verifies the servers this process calls.",
    )
    s3_access_key: str = Field(default="", description="S3 access key (s3:// stores).")
    s3_secret_key: SecretStr = Field(
        default=SecretStr(""), description="S3 secret key (s3:// stores)."
    )
    s3_region: str = Field(default="", description="S3 region; empty asks the server.")
    s3_retry_seconds: float = Field(
        default=DEFAULT_S3_RETRY_SECONDS,
        gt=0,
        description="How long an S3 request is retried while the server is unreachable or "
        "answers 5xx (a restart); then the call fails UNAVAILABLE, which callers retry.",
    )
    metrics_port: int | None = Field(
        default=0,
        le=65535,
        description="Port of the Prometheus /metrics HTTP endpoint (on `host`); 0 picks a "
        "free one, a negative value or empty disables the endpoint.",
    )
    metrics_port_file: Path | None = Field(
        default=None,
        description="Write the bound metrics port here once listening; defaults to "
        "<port_file>.metrics when port_file is set.",
    )
    tracing_exporter: Literal["none", "otlp", "jsonl"] = Field(
        default="none",
        description="Where OpenTelemetry spans go: none (tracing off), otlp (OTLP/gRPC to "
        "tracing_endpoint) or jsonl (one JSON span per line to tracing_file).",
    )
    tracing_endpoint: str = Field(
        default="",
        description="OTLP/gRPC collector address, e.g. http://localhost:4317; empty uses the "
        "exporter's default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317).",
    )
    tracing_file: str = Field(
        default="var/traces/{service}.jsonl",
        description="Span file of the jsonl exporter (appended); {service} is replaced by "
        "the process name (base, refine, upscale, orchestrator).",
    )

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_disables(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("store_url")
    @classmethod
    def _parsable_store_url(cls, value: str) -> str:
        parse_store_url(value)  # its ValueError names what is wrong, e.g. the bucket
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def open_store(self) -> InstrumentedStore:
        return open_store(
            self.store_url,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key.get_secret_value(),
            region=self.s3_region,
            retry_seconds=self.s3_retry_seconds,
        )

    @model_validator(mode="after")
    def _tls_pairs(self) -> CommonSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key come together (--tls-cert, --tls-key)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key (mutual TLS)")
        return self


class StageSettings(CommonSettings):
    """A stage process: one model behind the shared stage servicer."""

    model_family: str = Field(description="Registry name of the StageModel class to load.")
    model_path: Path = Field(description="Folder holding the model's files.")
    model_name: str | None = Field(
        default=None, description="Name reported by Describe; defaults to the model's own."
    )
    model_version: str = Field(default="1", description="Version reported by Describe.")
    device: str = Field(default="cpu", description="Torch device, e.g. cpu or cuda:0.")
    torch_threads: int = Field(
        default=0, ge=0, description="torch intra-op threads; 0 keeps the library default."
    )
    max_concurrency: int = Field(default=1, ge=1, description="Calls computing at the same time.")
    max_queue: int = Field(
        default=16, ge=0, description="Calls allowed to wait; beyond this, RESOURCE_EXHAUSTED."
    )
    max_batch_size: int = Field(
        default=1,
        ge=1,
        description="Dynamic batching: at most this many compatible calls run as one model "
        "call (txt2img: same width, height, steps, guidance_scale; refine without text: same "
        "mode, steps, strength, guidance_scale; learned upscale: same tile_size, "
        "tile_overlap, same-shape tiles run together); 1 turns it off.",
    )
    max_queue_delay_ms: float = Field(
        default=5.0,
        ge=0,
        description="Dynamic batching: how long a call waits for others to join its batch.",
    )
    output_prefix: str = Field(
        default="artifacts", description="Key prefix for outputs when a request names none."
    )
    max_side: int = Field(default=1024, ge=1, description="Largest accepted image side, in pixels.")
    backend: str = Field(
        default="torch",
        description="Execution backend for model_path: torch, onnxruntime (the folder must be "
        "an ONNX export: `stageflow models compile`) or tensorrt. A repository model's "
        "model.yaml names its own.",
    )
    providers: str = Field(
        default="",
        description="Comma-separated ONNX Runtime execution providers: cpu, cuda, tensorrt "
        "(default cpu). A provider that is not installed is an error, never a fall-back.",
    )
    model_repository: str | None = Field(
        default=None,
        description="Model repository root (a folder, or s3://bucket/prefix?endpoint=http://h:p "
        "with the S3 keys above); enables StageAdminService.LoadModel.",
    )
    model: str | None = Field(
        default=None,
        description="name@version to serve from the model repository; takes precedence over "
        "model_family and model_path.",
    )
    model_cache: Path = Field(
        default=Path("var/model-cache"),
        description="Where versions from an S3 model repository are downloaded to.",
    )
    trt_cache: Path | None = Field(
        default=None,
        description="Where the tensorrt backend caches the engines it builds; empty: "
        "~/.cache/stageflow/tensorrt.",
    )
    dtype: Literal["fp32", "fp16", "bf16", "auto"] = Field(
        default="auto",
        description="Precision of the weights: the torch backend casts the model's parts at "
        "load (latents, noise and the scheduler stay fp32); a compiled (ONNX) model runs in "
        "its export's precision and refuses another. auto (the default) is the CPU serving "
        "choice: bf16 on torch where the CPU has native bf16 (amx_bf16 or avx512_bf16 in "
        "/proc/cpuinfo) and the model has at least 256 MiB of weights, fp32 elsewhere, a "
        "compiled model's own. fp32 keeps images bit-identical to diffusers. The resolved "
        "precision and why show in Describe and in each result's model info; it is folded "
        "into the model's fingerprint.",
    )
    digest_cache: Path | None = Field(
        default=Path("var/digest-cache"),
        description="Where model files' sha256 digests are remembered by path, size, mtime, "
        "ctime and inode, so a restart re-hashes only changed files; empty: hash every file "
        "on every load.",
    )
    warmup: bool = Field(
        default=False,
        description="Before SERVING, run two guided UNet steps and one VAE decode at the "
        "model's native size, so the first requests are not slower than the rest (ONNX "
        "Runtime's arena and memory pattern; with compile=inductor, that shape's compile; "
        "costs those calls at start-up).",
    )
    compile: Literal["off", "inductor"] = Field(
        default="off",
        description="torch backend: inductor wraps the UNet's forward and the VAE decode in "
        "torch.compile(backend='inductor', dynamic=False) after load. Each new input shape "
        "(batch, latent size) compiles on its first call, which is slow (seconds to minutes "
        "on CPU; logged as model.compiled), and reuses its graph after; with warmup on, the "
        "native size compiles before SERVING. cache_interval > 1 runs its steps eager. The "
        "onnxruntime and tensorrt backends (exported graphs) refuse it.",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch backend: the UNet and VAE (and the latents they are called with) "
        "in torch.channels_last memory format, eager or compiled. auto: on for diffusion "
        "models of at least 256 MiB of weights (a whole image 0.92-0.93x eager's time at "
        "real scale on CPU, bench/compile.py), off elsewhere; true/false mean on/off. The "
        "onnxruntime and tensorrt backends and the upscaler refuse on.",
    )
    vae_tile_above_side: int = Field(
        default=1536,
        ge=0,
        description="Images with a side above this many pixels are VAE-decoded in tiles; 0: "
        "never by size alone.",
    )
    vae_memory_budget_mb: int = Field(
        default=0,
        ge=0,
        description="A VAE decode estimated to need more working memory than this (MiB) is "
        "decoded in tiles, small enough to fit; 0: no budget.",
    )
    vae_tile_side: int = Field(
        default=512, ge=64, description="Side of a VAE decode tile, in pixels."
    )
    vae_tile_overlap: int = Field(
        default=128, ge=0, description="Overlap of neighbouring VAE tiles, in pixels (blended)."
    )

    @field_validator("channels_last", mode="before")
    @classmethod
    def _bool_is_on_off(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.lower() in ("1", "true", "yes"):
            return "on"
        if isinstance(value, str) and value.lower() in ("0", "false", "no"):
            return "off"
        return value

    @field_validator("digest_cache", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return None if value == "" else value

    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @model_validator(mode="after")
    def _model_needs_repository(self) -> StageSettings:
        if self.model and not self.model_repository:
            raise ValueError("model (name@version) needs model_repository to be set")
        return self


__all__ = ["CommonSettings", "StageSettings", "load_settings"]
