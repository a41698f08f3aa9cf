"""The upscale stage: x4 super-resolution, tiled, or Lanczos."""

from collections.abc import Sequence

from stageflow.inference.registry import create_model
from stageflow.stage.main import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    run_stage(
        "upscale", create_model, argv, model_family="esrgan", model_path="models/tiny-esrgan-x4"
    )


if __name__ == "__main__":
    main()
