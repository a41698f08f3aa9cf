"""The client's settings: where the orchestrator is and how long a call may take.

A plain dataclass (the slim client has no pydantic); `from_env()` is the one
place the client reads the environment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from stageflow.client.errors import InvalidArgument

DEFAULT_ADDRESS = "127.0.0.1:50051"
MiB = 1024 * 1024

ADDRESS_ENV = "STAGEFLOW_ADDRESS"
TIMEOUT_ENV = "STAGEFLOW_CLIENT_TIMEOUT_SECONDS"
API_KEY_ENV = "STAGEFLOW_API_KEY"
TLS_ENV = {
    "tls_ca": "STAGEFLOW_TLS_CA",
    "tls_cert": "STAGEFLOW_TLS_CERT",
    "tls_key": "STAGEFLOW_TLS_KEY",
}


@dataclass(frozen=True)
class ClientSettings:
    """How a `StageflowClient` reaches the orchestrator."""

    # The orchestrator's "host:port" (any gRPC target, e.g. "dns:///orch:50051").
    address: str = DEFAULT_ADDRESS
    # Deadline of each unary call and of each artifact download, in seconds;
    # WatchJob streams have none (a job may run for long).
    timeout_seconds: float = 30.0
    # gRPC send/receive limit, as the servers set it (gRPC's default receive is 4 MiB).
    max_message_bytes: int = 16 * MiB
    # Sent as `authorization: Bearer <key>` on every call when set (an
    # orchestrator with auth on needs it); never shown in repr.
    api_key: str = field(default="", repr=False)
    # TLS to the orchestrator: PEM files. `tls_ca` verifies the server (empty:
    # plaintext unless a certificate is given); `tls_cert`/`tls_key` are the
    # client certificate an orchestrator with mutual TLS requires.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise InvalidArgument.of_field("address", "must be host:port, got an empty string")
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise InvalidArgument.of_field(
                "timeout_seconds", f"must be a positive number, got {self.timeout_seconds}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument.of_field("tls_cert", "tls_cert and tls_key come together")
        if self.max_message_bytes < MiB + 64 * 1024:  # an artifact chunk must fit
            raise InvalidArgument.of_field(
                "max_message_bytes", f"must be at least 1.0625 MiB, got {self.max_message_bytes}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """Settings from STAGEFLOW_ADDRESS (default 127.0.0.1:50051),
        STAGEFLOW_CLIENT_TIMEOUT_SECONDS (default 30), STAGEFLOW_API_KEY
        (default none) and STAGEFLOW_TLS_CA / _CERT / _KEY (default
        plaintext); unset or empty means the default."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        if address := env.get(ADDRESS_ENV, "").strip():
            kwargs["address"] = address
        if api_key := env.get(API_KEY_ENV, "").strip():
            kwargs["api_key"] = api_key
        for name, variable in TLS_ENV.items():
            if value := env.get(variable, "").strip():
                kwargs[name] = value
        if timeout := env.get(TIMEOUT_ENV, "").strip():
            try:
                kwargs["timeout_seconds"] = float(timeout)
            except ValueError:
                raise InvalidArgument.of_field(
                    TIMEOUT_ENV, f"must be a number of seconds, got {timeout!r}"
                ) from None
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except InvalidArgument as err:
            # Name the variable the bad value came from, not the dataclass field.
            env_name = {"address": ADDRESS_ENV, "timeout_seconds": TIMEOUT_ENV}.get(err.field)
            if env_name is None:
                raise
            problem = err.field_violations[0].description
            raise InvalidArgument.of_field(env_name, problem) from None
