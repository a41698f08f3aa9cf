"""Print the requirements of the project and of its extras, one per line, for `pip install -r`.

The image builds install dependencies in a layer of their own (cached until
pyproject.toml or requirements.lock change) and the project's wheel afterwards
with --no-deps. `--extra NAME` adds an extra of [project.optional-dependencies]
(`stage`, `orchestrator`, ...), following the extras it names of the project
itself (`stageflow[serving]`); without one, only [project] dependencies (the
slim client). `--exclude NAME ...` leaves packages out: the CUDA image swaps
onnxruntime for onnxruntime-gpu. Standard library only: it runs before anything
is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def normalise(name: str) -> str:
    """PEP 503 name: `Pillow`, `pillow` and `PILLOW` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalise(match.group(1))


def _requirement_extras(requirement: str) -> list[str]:
    match = _NAME.match(requirement)
    assert match is not None
    return [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]


def project_requirements(
    pyproject: Path,
    extras: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[str]:
    """[project] dependencies plus those of EXTRAS (the project's own extras they
    name followed, each requirement once, in order), minus the EXCLUDE names.

    An unknown extra or an exclude that names no selected requirement is an error:
    a typo must not build an image with the wrong packages."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own = normalise(project["name"])
    optional: dict[str, list[str]] = {
        normalise(k): v for k, v in project.get("optional-dependencies", {}).items()
    }
    selected: list[str] = []
    seen_extras: set[str] = set()

    def add(requirements: list[str]) -> None:
        for requirement in requirements:
            if requirement_name(requirement) == own:
                for extra in _requirement_extras(requirement):
                    add_extra(extra)
            elif requirement not in selected:
                selected.append(requirement)

    def add_extra(extra: str) -> None:
        key = normalise(extra)
        if key not in optional:
            known = ", ".join(sorted(optional))
            raise ValueError(f"--extra {extra}: no such extra in {pyproject} (it has: {known})")
        if key not in seen_extras:
            seen_extras.add(key)
            add(optional[key])

    add(project["dependencies"])
    for extra in extras:
        add_extra(extra)
    wanted = {normalise(name) for name in exclude}
    unknown = wanted - {requirement_name(dep) for dep in selected}
    if unknown:
        raise ValueError(f"--exclude names no selected requirement: {sorted(unknown)}")
    return [dep for dep in selected if requirement_name(dep) not in wanted]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra of [project.optional-dependencies] (repeatable)",
    )
    parser.add_argument("--exclude", nargs="*", default=[], help="package names to leave out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        deps = project_requirements(args.pyproject, args.extra, args.exclude)
    except ValueError as err:
        print(f"project_deps: {err}", file=sys.stderr)
        return 2
    print("\n".join(deps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
