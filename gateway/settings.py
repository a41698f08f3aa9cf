"""Settings of the gateway process: built once at start-up from env and flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from stageflow.core.settings import StageflowSettings

MIN_SECRET_CHARS = 32


class GatewaySettings(StageflowSettings):
    """Where to listen and where the orchestrator is."""

    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for all.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    port_file: Path | None = Field(
        None,
        description="Write the bound port here (atomically) once listening, so a "
        "launcher can find a port-0 gateway; removed on exit.",
    )
    orchestrator_address: str = Field(
        "127.0.0.1:50051", description="The orchestrator's gRPC target (host:port or dns:///)."
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of each orchestrator call a request makes."
    )
    upload_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest uploaded image, in bytes (read no further)."
    )
    upload_max_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Most pixels (width x height, from the header) an upload may declare; "
        "more is refused before decoding (decompression bombs).",
    )
    upload_max_side: int = Field(
        8192, ge=1, description="Longest side of an uploaded image, in pixels."
    )
    public_url: str = Field(
        "",
        description="Base URL share links are made with (e.g. https://images.example.com); "
        "empty: the URL the request came in on.",
    )
    session_secret_key: SecretStr = Field(
        SecretStr(""),
        description="Secret the workspace's sign-in cookies are encrypted with (at least 32 "
        "characters; every gateway replica behind one address needs the same). Empty: a "
        "random one per process, so a restart signs everyone out.",
    )
    session_max_age_seconds: int = Field(
        12 * 3600, ge=60, description="How long a workspace sign-in lasts, in seconds."
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate: serve HTTPS with it, and present it to the "
        "orchestrator (mutual TLS). Needs tls_key.",
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_ca: Path | None = Field(
        None, description="PEM CA bundle verifying the orchestrator: gRPC over TLS."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_json: bool = Field(False, description="JSON lines on stderr instead of console text.")

    @field_validator("session_secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"must be empty or at least {MIN_SECRET_CHARS} characters, "
                "e.g. `openssl rand -hex 32`"
            )
        return value
