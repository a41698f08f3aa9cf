"""What the job page shows of a job's versions, as plain values (pure: no
request, no client), so the page's rules are unit-tested without a browser.

- `columns`: one `Column` per version, each stage's output state, where a
  reused stage's output was made ("reused from v1"), cache hits and the
  typography check.
- `parameter_rows`: every parameter name any version has, with each
  version's value and whether it differs from the version before
  (`recipe.changed_parameters`, the same names the exported image carries).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from stageflow.client.recipe import changed_parameters, flat_parameters, reused_stages
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def state_name(value: int, enum: type = pb.JobState) -> str:
    """JOB_STATE_SUCCEEDED -> "succeeded" (STAGE_STATE_... alike)."""
    return str(enum.Name(value)).split("_STATE_", 1)[1].lower()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StageCell:
    stage: str
    state: str
    has_output: bool
    model: str
    reused_from: int | None  # the version whose run made this output
    cache_hit: bool
    text_check: stage_pb2.TextCheck | None  # the typography pass's OCR check
    error: str


@dataclass(frozen=True)
class Column:
    version: int
    state: str
    finished: bool
    has_final: bool
    rerun_from: str
    changed: frozenset[str]
    stages: list[StageCell] = field(default_factory=list)


def _model(run: pb.StageRun) -> str:
    if not run.model.name:
        return ""
    return run.model.name + (f"@{run.model.version}" if run.model.version else "")


def columns(versions: Sequence[pb.Job]) -> list[Column]:
    """One column per version, oldest first. A stage a rerun kept is marked
    with the version that really ran it (v3 rerun from upscale keeps v2's
    refine, which v2 kept from v1: "reused from v1")."""
    made_in: dict[str, int] = {}  # stage -> version whose run made its output
    out = []
    previous: pb.Job | None = None
    for job in versions:
        number = job.version or 1
        reused = set(reused_stages(job))
        cells = []
        for run in job.stages:
            if run.stage not in reused:
                made_in[run.stage] = number
            cells.append(
                StageCell(
                    stage=run.stage,
                    state=state_name(run.state, pb.StageState),
                    has_output=run.state == pb.STAGE_STATE_SUCCEEDED and bool(run.output.key),
                    model=_model(run),
                    reused_from=made_in.get(run.stage) if run.stage in reused else None,
                    cache_hit=run.cache_hit,
                    text_check=run.text_check if run.HasField("text_check") else None,
                    error=run.error,
                )
            )
        out.append(
            Column(
                version=number,
                state=state_name(job.state),
                finished=job.state in TERMINAL,
                has_final=job.state == pb.JOB_STATE_SUCCEEDED and bool(job.final.key),
                rerun_from=job.rerun_from,
                changed=frozenset(changed_parameters(job, previous)),
                stages=cells,
            )
        )
        previous = job
    return out


@dataclass(frozen=True)
class Cell:
    value: str | None  # None: this version has no such parameter
    changed: bool


@dataclass(frozen=True)
class Row:
    name: str
    cells: list[Cell]

    @property
    def varies(self) -> bool:
        return any(cell.changed for cell in self.cells)


def parameter_rows(versions: Sequence[pb.Job]) -> list[Row]:
    """Every parameter name of any version (in the first version's order,
    names new in later versions after), each version's value, and whether
    it changed from the version before (`recipe.changed_parameters`)."""
    flats = [flat_parameters(job) for job in versions]
    pairs = itertools.pairwise(versions)
    changed: list[set[str]] = [set(), *(changed_parameters(b, a) for a, b in pairs)]
    names: dict[str, None] = {}
    for flat in flats:
        names.update(dict.fromkeys(flat))
    return [
        Row(
            name,
            [Cell(flat.get(name), name in diff) for flat, diff in zip(flats, changed, strict=True)],
        )
        for name in names
    ]
