"""The sharpen kind's model layer: its parameters and a StageModel over PIL.

The model's folder holds one `unsharp.json` (its settings: the fingerprint the
stage cache keys on comes from it); the pass itself needs no weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageFilter

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.inference.base import folder_fingerprint
from stageflow.inference.interface import (
    CancelledFn,
    ModelDescription,
    ModelIdentity,
    ProgressFn,
    StageInputs,
    StageModel,
    StageParams,
    bounded,
    param_ranges,
)

CONFIG = "unsharp.json"


@dataclass(frozen=True)
class SharpenParams:
    # Strength as a fraction: 1.0 is PIL's percent=100.
    amount: float = field(default=1.0, metadata=bounded(0.0, 5.0))
    radius: int = field(default=2, metadata=bounded(0, 16))
    threshold: int = field(default=0, metadata=bounded(0, 255))


def unsharp(image: Image.Image, params: SharpenParams) -> Image.Image:
    return image.filter(
        ImageFilter.UnsharpMask(
            radius=params.radius, percent=round(params.amount * 100), threshold=params.threshold
        )
    )


class SharpenModel(StageModel):
    kind: ClassVar[str] = "sharpen"
    params_type: ClassVar[type] = SharpenParams

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        version: str = "1",
        max_side: int = 1024,
        **_: Any,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.version = version
        self.max_side = max_side
        self._identity: ModelIdentity | None = None

    def load(self) -> None:
        config = self.path / CONFIG
        if not config.is_file():
            raise FailedPrecondition(f"{config} is missing")
        json.loads(config.read_text())  # it must parse
        self._identity = ModelIdentity(
            self.name, self.version, "pil", folder_fingerprint(self.path)
        )

    def describe(self) -> ModelDescription:
        if self._identity is None:
            raise FailedPrecondition(f"model {self.name} is not loaded")
        return ModelDescription(
            kind=self.kind,
            identity=self._identity,
            min_side=1,
            max_side=self.max_side,
            size_multiple=1,
            param_ranges=param_ranges(SharpenParams),
        )

    def validate_inputs(self, params: StageParams, inputs: StageInputs) -> None:
        if inputs.image is None:
            raise InvalidArgument("image", "is required: the sharpen stage reads an input image")

    def run(
        self, params: StageParams, inputs: StageInputs, progress: ProgressFn, cancelled: CancelledFn
    ) -> Image.Image:
        assert isinstance(params, SharpenParams) and inputs.image is not None
        out = unsharp(inputs.image, params)
        progress(1, 1)
        return out
