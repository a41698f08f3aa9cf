"""The refine stage: img2img and inpainting (the typography pass)."""

from collections.abc import Sequence

from stageflow.inference.registry import create_model
from stageflow.stage.main import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    # The model it serves by default is in its declaration (stageflow.kinds.builtin).
    run_stage("refine", create_model, argv)


if __name__ == "__main__":
    main()
