"""Settings of the orchestrator process: built once at start-up from env and flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stageflow.serving.settings import CommonSettings

# The specs shipped with stageflow, found wherever the process is started from.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


class OrchestratorSettings(CommonSettings):
    """Where the stages are, where job state lives, and the limits on running jobs."""

    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    base_address: str = Field(
        "127.0.0.1:50061",
        description="host:port of the base (txt2img) stage; a comma-separated list of "
        "host:port and/or dns:///name:port targets balances calls over replicas.",
    )
    refine_address: str = Field(
        "127.0.0.1:50062",
        description="host:port(s) of the refine (img2img/inpaint) stage, as base_address.",
    )
    upscale_address: str = Field(
        "127.0.0.1:50063",
        description="host:port(s) of the upscale (super-resolution) stage, as base_address.",
    )
    db_path: Path = Field(
        Path("var/orchestrator.sqlite"),
        description="SQLite file holding job state; its folder is created when missing.",
    )
    output_prefix: str = Field(
        "artifacts", description="Object-store key prefix under which stages write outputs."
    )
    stage_timeout_seconds: float = Field(
        600.0, gt=0, description="Deadline of each stage call, in seconds."
    )
    retry_base_seconds: float = Field(
        0.2,
        gt=0,
        description="First backoff bound before retrying a stage call that failed with "
        "UNAVAILABLE or RESOURCE_EXHAUSTED; doubles each retry, the delay drawn in [0, bound).",
    )
    retry_cap_seconds: float = Field(
        2.0, gt=0, description="Largest backoff bound between stage call retries."
    )
    retry_budget_seconds: float = Field(
        120.0,
        gt=0,
        description="How long a stage call is retried (and a call to a stage's only replica "
        "waits for it to connect) while the stage is UNAVAILABLE, e.g. restarting or its "
        "object store down; never past the job's deadline.",
    )
    exhausted_max_attempts: int = Field(
        3,
        ge=1,
        description="Stage calls in all while a stage answers RESOURCE_EXHAUSTED, before "
        "its spec's fallback route is taken (or the job fails).",
    )
    max_running_jobs: int = Field(
        4, ge=1, description="Jobs running at once; later jobs wait QUEUED for a slot."
    )
    final_url_expiry_seconds: int = Field(
        3600, ge=1, description="Lifetime of the presigned URL of a job's final image."
    )
    pipelines_dir: Path = Field(
        PIPELINES_DIR,
        description="Folder of pipeline specs (<name>.yaml, one of them default.yaml), "
        "loaded and validated at start-up; a bad spec stops the process.",
    )
    stage_limits: str = Field(
        "",
        description="Stage calls in flight per stage service, e.g. 'base=2,upscale=1'; "
        "a stage not named gets its Describe's max_concurrency + max_queue, and the "
        "calls beyond that wait in the orchestrator (interactive before bulk).",
    )
    stage_cache: bool = Field(
        True,
        description="Reuse a stage's output when its content address (stage, model, "
        "parameters, input digests) was computed before; false calls every stage.",
    )
