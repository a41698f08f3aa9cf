"""The base stage: text to image."""

from collections.abc import Sequence

from stageflow.inference.registry import create_model
from stageflow.stage.main import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    run_stage("base", create_model, argv, model_family="sd-txt2img", model_path="models/tiny-sd")


if __name__ == "__main__":
    main()
