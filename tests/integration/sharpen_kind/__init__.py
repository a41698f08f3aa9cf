"""A fourth stage kind, declared outside stageflow: an unsharp-mask pass.

This package is the whole declaration: the `Kind` below (imported by the
orchestrator: no model code, no torch) and, in `model.py`, the model layer's
params dataclass and StageModel (imported only by the stage process, through
the paths named here). It has no params or options message of its own: its
requests travel as GenericParams, a job's options as SubmitJobRequest.options.
A process learns of it through the `stageflow.kinds` entry-point group (the
test writes a dist-info folder that points there) or `stageflow.kinds.register`.
"""

from stageflow.kinds import Kind, Limit

SHARPEN = Kind(
    name="sharpen",
    summary="unsharp mask (PIL), no weights",
    params_type="tests.integration.sharpen_kind.model:SharpenParams",
    options={"amount": float, "radius": int, "threshold": int},
    limits={"amount": Limit(ge=0, le=5), "radius": Limit(ge=0, le=16)},
    model_family="unsharp-mask",
    model_folder="unsharp-mask",
    family_classes={"unsharp-mask": "tests.integration.sharpen_kind.model:SharpenModel"},
)
