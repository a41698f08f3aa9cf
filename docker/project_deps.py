"""Print pyproject.toml's runtime dependencies, one per line, for `pip install -r`.

The image builds install dependencies in a layer of their own (cached until
pyproject.toml or requirements.lock change) and the project itself afterwards
with --no-deps. `--exclude NAME ...` leaves packages out: the orchestrator image
drops the model stack, the CUDA image swaps onnxruntime for onnxruntime-gpu.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 name: `Pillow`, `pillow` and `PILLOW` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalise(match.group(1))


def project_dependencies(
    pyproject: Path, exclude: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """The [project] dependencies, minus the excluded names (checked: a typo is an error)."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    wanted = {normalise(name) for name in exclude}
    unknown = wanted - {requirement_name(dep) for dep in deps}
    if unknown:
        raise ValueError(f"--exclude names no dependency of {pyproject}: {sorted(unknown)}")
    return [dep for dep in deps if requirement_name(dep) not in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--exclude", nargs="*", default=[], help="package names to leave out")
    args = parser.parse_args(argv)
    try:
        deps = project_dependencies(args.pyproject, set(args.exclude))
    except ValueError as err:
        print(f"project_deps: {err}", file=sys.stderr)
        return 2
    print("\n".join(deps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
