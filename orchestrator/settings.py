"""Settings of the orchestrator process: built once at start-up from env and flags."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from stageflow.core.errors import InvalidArgument
from stageflow.kinds.builtin import DEFAULT_PIPELINE
from stageflow.orchestrator.auth import MIN_SECRET_CHARS
from stageflow.orchestrator.quotas import parse_quota
from stageflow.orchestrator.store import sqlite_path
from stageflow.serving.settings import CommonSettings

# The specs shipped with stageflow, found wherever the process is started from.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


# Loopback ports of the built-in stages when nothing else is configured.
DEFAULT_STAGES = {name: [f"127.0.0.1:{50061 + i}"] for i, name in enumerate(DEFAULT_PIPELINE)}
_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]*")


def parse_stages(value: Any) -> dict[str, list[str]]:
    """`stages` from its text form ('base=a:1,b:2;refine=c:3' or JSON) or a mapping."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            value = {}
            for part in filter(None, (p.strip() for p in text.split(";"))):
                name, eq, addresses = part.partition("=")
                if not eq:
                    raise ValueError(f"expected NAME=HOST:PORT[,HOST:PORT...], got {part!r}")
                value[name.strip()] = addresses
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of stage name to addresses, got {value!r}")
    out: dict[str, list[str]] = {}
    for name, addresses in value.items():
        if not isinstance(name, str) or not _SERVICE.fullmatch(name):
            raise ValueError(f"stage name {name!r}: lowercase letters, digits, '.', '_', '-'")
        entries = addresses.split(",") if isinstance(addresses, str) else addresses
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{name}: expected addresses, got {addresses!r}")
        cleaned = [e.strip() for e in entries if e.strip()]
        if not cleaned:
            raise ValueError(f"{name}: no address")
        out[name] = cleaned
    return out


class OrchestratorSettings(CommonSettings):
    """Where the stages are, where job state lives, and the limits on running jobs."""

    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    stages: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_STAGES),
        description="Stage service name -> its replicas: 'base=h:p;refine=h:p,h2:p;...' "
        "(';' between services, ',' between replicas; host:port or dns:///name:port, "
        "which balances over what the name resolves to) or a JSON object of lists. A "
        "pipeline stage runs on the service named like it, or on its spec's `service`.",
    )
    db_path: Path = Field(
        Path("var/orchestrator.sqlite"),
        description="SQLite file holding job state when `job_store_url` is empty; its "
        "folder is created when missing.",
    )
    job_store_url: str = Field(
        "",
        description="Where job state lives: sqlite:///PATH (relative; sqlite:////abs/path) "
        "or postgresql://USER@HOST:PORT/DB (several orchestrator replicas share one "
        "PostgreSQL). Empty: the SQLite file `db_path`. A PostgreSQL password comes from "
        "the URL, `job_store_password_file`, or libpq's PGPASSWORD / PGPASSFILE.",
    )
    job_store_password_file: Path | None = Field(
        None,
        description="File holding the PostgreSQL password (e.g. a mounted Secret); "
        "one line, its trailing newline ignored.",
    )
    job_store_pool_size: int = Field(
        10, ge=1, le=1000, description="Most PostgreSQL connections this process holds."
    )
    job_store_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How long a call waits for the job database before failing "
        "UNAVAILABLE (and the longest connect at start-up).",
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
    lease_seconds: float = Field(
        10.0,
        ge=1.0,
        le=600.0,
        description="Replicas over PostgreSQL: how long a replica's claim on a job "
        "(and on a stage-call slot) lasts unless renewed (every third of it). A dead or "
        "paused replica's jobs are taken over this long after its last renewal.",
    )
    replica_name: str = Field(
        "",
        max_length=200,
        description="Replicas: this orchestrator's name in the lease table (logs, "
        "owner column); empty: host-pid-random, unique per process.",
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
    auth: bool = Field(
        False,
        description="Require an API key (metadata authorization: Bearer KEY) on every "
        "OrchestratorService call and scope jobs to its tenant; off, every caller sees "
        "every job (the embedded `stageflow up`). Keys: `stageflow keys create`.",
    )
    auth_secret_key: SecretStr = Field(
        SecretStr(""),
        description=f"Server secret of the keyed hash (HMAC-SHA256) API keys are stored "
        f"under, at least {MIN_SECRET_CHARS} characters; needed with auth on. Rotating it "
        "invalidates every key.",
    )

    upload_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest uploaded image (UploadImage), in bytes."
    )
    upload_max_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Most pixels (width x height, from the header) an uploaded image may "
        "declare; more is refused before it is stored (decompression bombs).",
    )

    share_secret_key: SecretStr = Field(
        SecretStr(""),
        description="Secret the share links (ShareArtifact) are signed with (HMAC-SHA256), "
        "at least 32 characters; empty turns sharing off. Rotating it revokes every link.",
    )
    share_max_seconds: int = Field(
        7 * 24 * 3600, ge=1, description="Longest lifetime a share link may be given."
    )

    default_quota: str = Field(
        "",
        description="Each tenant's limits unless `stageflow keys create --quota` set its own: "
        "'running=N,queued=N,per_minute=N' (any of them; empty: none). Over them a submit "
        "is RESOURCE_EXHAUSTED with a retry delay (HTTP 429 + Retry-After); jobs past "
        "`running` wait QUEUED. Only with auth on (tenants).",
    )

    @field_validator("job_store_url")
    @classmethod
    def _store_url_parses(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        scheme, sep, _ = value.partition("://")
        if not sep or scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
                f"got scheme {scheme + '://' if sep else value[:20]!r}"
            )
        if scheme == "sqlite":
            sqlite_path(value)  # raises ValueError naming the field
        return value

    @property
    def job_store(self) -> str:
        """The resolved `job_store_url` (the one place the SQLite default is made)."""
        return self.job_store_url or f"sqlite:///{self.db_path}"

    def job_store_password(self) -> str | None:
        if self.job_store_password_file is None:
            return None
        return self.job_store_password_file.read_text().rstrip("\r\n")

    @field_validator("default_quota")
    @classmethod
    def _quota_parses(cls, value: str) -> str:
        try:
            parse_quota(value, "default_quota")
        except InvalidArgument as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _auth_needs_secret(self) -> OrchestratorSettings:
        if self.auth and len(self.auth_secret_key.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"auth needs auth_secret_key (STAGEFLOW_AUTH_SECRET_KEY) of at least "
                f"{MIN_SECRET_CHARS} characters, e.g. `openssl rand -hex 32`"
            )
        return self

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, value: Any) -> dict[str, list[str]]:
        return parse_stages(value)
