"""`python -m stageflow.stage NAME [flags]`: serve the stage kind NAME.

NAME is any kind of the registry (stageflow.kinds): the built-ins (base,
refine, upscale) or one a plugin declares; flags and STAGEFLOW_* variables are
StageSettings'.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stageflow import kinds
from stageflow.inference.registry import create_model
from stageflow.stage.main import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        known = ", ".join(kinds.names())
        raise SystemExit(f"usage: python -m stageflow.stage NAME [flags]; NAME is one of {known}")
    name, rest = args[0], args[1:]
    if kinds.find(name) is None:
        raise SystemExit(f"unknown stage kind {name!r}; known: {', '.join(kinds.names())}")
    run_stage(name, create_model, rest)


if __name__ == "__main__":
    main()
