"""The settings base: every stageflow process reads its configuration here, once.

Sources, highest first: command-line flags (``--store-url VALUE``), the
environment (``STAGEFLOW_STORE_URL``), the process's own defaults (passed to
`load_settings`), then the field defaults. Nothing reads these per request,
and nothing else in stageflow reads ``STAGEFLOW_*`` variables.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict


class StageflowSettings(BaseSettings):
    """Base of every process's settings: ``STAGEFLOW_`` variables, unknown names refused."""

    model_config = SettingsConfigDict(env_prefix="STAGEFLOW_", extra="forbid")


T = TypeVar("T", bound=BaseSettings)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _prog() -> str:
    """How the process was started, for its messages: `python -m MODULE` for a
    module run with -m (argv[0] is then a path ending in __main__.py, which
    names no service), else the script's name."""
    name = Path(sys.argv[0]).name
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if name == "__main__.py" and spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return name


def _usage(cls: type[BaseSettings]) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    lines = [f"usage: {_prog()} [options]", "", "options (or environment):"]
    for name, info in cls.model_fields.items():
        arg = "" if info.annotation is bool else " VALUE"
        default = " (required)" if info.is_required() else f" (default: {info.default})"
        if name.endswith("secret_key"):
            default = ""
        lines.append(f"  {_flag(name)}{arg}  [{prefix}{name.upper()}]")
        lines.append(f"      {info.description or ''}{default}")
    return "\n".join(lines)


def _fail(message: str) -> SystemExit:
    prog = _prog()
    print(f"{prog}: error: {message}\n{prog} --help lists the options.", file=sys.stderr)
    return SystemExit(2)


def _parse_flags(cls: type[BaseSettings], argv: list[str]) -> dict[str, Any]:
    """``--name value``, ``--name=value``; a bool also as ``--name`` / ``--no-name``."""
    fields = {_flag(name): name for name in cls.model_fields}
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(_usage(cls))
            raise SystemExit(0)
        flag, eq, inline = arg.partition("=")
        negated = flag.startswith("--no-") and fields.get("--" + flag[5:]) is not None
        name = fields.get("--" + flag[5:]) if negated else fields.get(flag)
        if name is None:
            raise _fail(f"unknown option {arg!r}")
        if cls.model_fields[name].annotation is bool:
            if negated:
                values[name] = False
            elif eq:
                values[name] = inline
            elif i < len(argv) and argv[i].lower() in _TRUE | _FALSE:
                values[name] = argv[i]
                i += 1
            else:
                values[name] = True
        elif eq:
            values[name] = inline
        elif i < len(argv):
            values[name] = argv[i]
            i += 1
        else:
            raise _fail(f"option {flag} needs a value")
    return values


def load_settings(cls: type[T], argv: list[str] | None = None, **defaults: Any) -> T:
    """Build settings from flags > environment > `defaults` > field defaults.

    `argv` defaults to ``sys.argv[1:]``. A bad flag or value exits with
    status 2 and a usage message naming the flag and its variable.
    """
    flags = _parse_flags(cls, sys.argv[1:] if argv is None else argv)
    env = EnvSettingsSource(cls)()
    try:
        # Init values outrank the environment in pydantic-settings, so the
        # merge below is the whole precedence order.
        return cls(**{**defaults, **env, **flags})
    except ValidationError as e:
        prefix = cls.model_config.get("env_prefix", "")
        problems = [
            f"{_flag(str(err['loc'][0]))} / {prefix}{str(err['loc'][0]).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in e.errors()
        ]
        raise _fail("; ".join(problems)) from None
