"""What the `stageflow` command reads from the environment, as settings objects.

The servers' own are `stageflow.serving.settings.StageSettings` and
`stageflow.orchestrator.settings.OrchestratorSettings`; the CLI's commands
that open a store or the model repository build one of these at their start
and hand the values to the code they call. pydantic-settings comes with the
serving extras, not with the slim client: import this module inside those
commands, never at the top of a CLI module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import typer
from pydantic import Field, SecretStr, ValidationError
from rich.console import Console
from rich.text import Text

from stageflow.core.settings import StageflowSettings

T = TypeVar("T", bound=StageflowSettings)

EXIT_USAGE = 2


class S3Keys(StageflowSettings):
    """The keys of an s3:// store or model repository named on the command line."""

    s3_access_key: str = Field(default="", description="S3 access key (s3:// stores).")
    s3_secret_key: SecretStr = Field(
        default=SecretStr(""), description="S3 secret key (s3:// stores)."
    )
    s3_region: str = Field(default="", description="S3 region; empty asks the server.")


class ModelCommandSettings(S3Keys):
    """`stageflow models ...`: the repository a command works on when --repository
    names none, and where an S3 repository's versions are downloaded."""

    model_repository: str = Field(
        default="models/repository",
        description="Model repository root: a folder or s3://bucket/prefix?endpoint=http://h:p.",
    )
    model_cache: Path | None = Field(
        default=None,
        description="Download folder of an S3 repository; empty: the repository's default.",
    )


class KeyCommandSettings(StageflowSettings):
    """`stageflow keys create`: the orchestrator's key-hashing secret (the same value
    the orchestrator reads as auth_secret_key)."""

    auth_secret_key: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC secret that API keys are hashed with (at least 32 characters).",
    )


# Every class above: the STAGEFLOW_* names a `stageflow` container may set
# (tests/deploy/policies.py checks the manifests against them).
CLI_SETTINGS: tuple[type[StageflowSettings], ...] = (
    S3Keys,
    ModelCommandSettings,
    KeyCommandSettings,
)


def from_environment(cls: type[T]) -> T:
    """CLS from its STAGEFLOW_* variables; a bad value exits 2 naming the variable."""
    try:
        return cls()
    except ValidationError as err:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = "; ".join(
            f"{prefix}{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else e["msg"]
            for e in err.errors()
        )
        Console(stderr=True).print(Text(f"error: {problems}"), soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
