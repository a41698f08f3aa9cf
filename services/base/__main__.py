"""The base stage: text to image."""

from collections.abc import Sequence

from inference.registry import create_model
from serving.stage_main import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    run_stage("base", create_model, argv, model_family="sd-txt2img", model_path="models/tiny-sd")


if __name__ == "__main__":
    main()
