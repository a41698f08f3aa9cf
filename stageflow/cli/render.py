"""How jobs look in a terminal: live stage progress, timing tables, job summaries."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Self

from google.protobuf import json_format
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from stageflow.v1 import orchestrator_pb2 as pb

_STAGE_MARK = {
    pb.STAGE_STATE_SUCCEEDED: "[green]done[/]",
    pb.STAGE_STATE_FAILED: "[red]failed[/]",
    pb.STAGE_STATE_CANCELLED: "[yellow]cancelled[/]",
}


def job_state_name(state: int) -> str:
    """JOB_STATE_SUCCEEDED -> succeeded."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def stage_state_name(state: int) -> str:
    return pb.StageState.Name(state).removeprefix("STAGE_STATE_").lower()


def job_dict(job: pb.Job) -> dict[str, Any]:
    return json_format.MessageToDict(job, preserving_proto_field_name=True)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


class StageProgress:
    """One bar per stage, fed with WatchJob events; a context manager around rich's Progress."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def _task(self, stage: str) -> TaskID:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=None, start=False, status="")
        return self._tasks[stage]

    def _show_run(self, run: pb.StageRun) -> None:
        task = self._task(run.stage)
        total = run.total_steps or None
        done = run.state == pb.STAGE_STATE_SUCCEEDED
        if run.state != pb.STAGE_STATE_PENDING:
            self._progress.start_task(task)
        if done and total is None:
            total = 1  # a cached stage ran no steps: still show it complete
        completed = total if done and total else run.step
        status = _STAGE_MARK.get(run.state, "")
        self._progress.update(task, total=total, completed=completed, status=status)
        if run.state in _STAGE_MARK:
            self._progress.stop_task(task)

    def handle(self, event: pb.WatchJobResponse) -> None:
        kind = event.WhichOneof("event")
        if kind in ("snapshot", "finished"):
            job = event.snapshot if kind == "snapshot" else event.finished
            for run in job.stages:
                self._show_run(run)
        elif kind == "stage_started":
            task = self._task(event.stage_started.stage)
            self._progress.start_task(task)
            self._progress.update(task, status="[cyan]running[/]")
        elif kind == "stage_progress":
            p = event.stage_progress
            task = self._task(p.stage)
            self._progress.start_task(task)
            self._progress.update(task, total=p.total_steps or None, completed=p.step)
        elif kind == "stage_finished":
            self._show_run(event.stage_finished.run)


def timing_table(job: pb.Job) -> Table:
    """Where each stage spent its time, and which model did the work."""
    title = f"job {job.job_id}: {job_state_name(job.state)} (times in ms)"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for header in ("queue", "load", "compute", "store", "total"):
        table.add_column(header, justify="right", no_wrap=True)
    for run in job.stages:
        t = run.timing
        model = "/".join(p for p in (run.model.name, run.model.version, run.model.backend) if p)
        ms = [t.queue_ms, t.load_inputs_ms, t.compute_ms, t.store_output_ms, t.total_ms]
        table.add_row(
            run.stage,
            # A cache hit made no stage call: its times are those of the original run.
            stage_state_name(run.state) + (" (cached)" if run.cache_hit else ""),
            model or "-",
            *(f"{v:.1f}" for v in ms),
        )
    return table


def text_check_lines(job: pb.Job) -> list[str]:
    """One line per stage that ran the typography pass: what OCR read back."""
    lines = []
    for run in job.stages:
        if not run.HasField("text_check"):
            continue
        check = run.text_check
        verdict = "exact" if check.exact else f"CER {check.cer:.3f}"
        how = (
            f"fell back to the exact render after {check.attempts} attempts"
            if check.fell_back
            else f"harmonised in {check.attempts} attempt{'s' if check.attempts > 1 else ''}"
        )
        lines.append(f"{run.stage} text check: {check.ocr_text!r} ({verdict}), {how}")
    return lines


def warning_lines(job: pb.Job) -> list[str]:
    """The stages' warnings (e.g. prompt words the model does not know), each once."""
    lines: list[str] = []
    for run in job.stages:
        for warning in run.warnings:
            if not any(line.endswith(warning) for line in lines):
                lines.append(f"warning: {run.stage}: {warning}")
    return lines


def job_summary(job: pb.Job) -> Table:
    """The key facts of one job, for `stageflow get`."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("job", job.job_id),
        ("state", job_state_name(job.state)),
        ("prompt", job.prompt),
        ("seed", str(job.seed)),
        ("size", f"{job.width}x{job.height}"),
        (
            "version",
            f"{job.version or 1}" + (f" (rerun from {job.rerun_from})" if job.rerun_from else ""),
        ),
        ("pipeline", f"{job.pipeline} ({job.pipeline_sha256[:12]})" if job.pipeline else "-"),
        ("final", job.final.key or "-"),
        ("final url", job.final_url or "-"),
        ("error", job.error or "-"),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # user text: never rich markup
    return table


def jobs_table(jobs: list[pb.Job]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for header in ("job", "state", "created", "size"):
        table.add_column(header, no_wrap=True)
    table.add_column("prompt", ratio=1)  # the only column that wraps
    for job in jobs:
        created = (
            job.created_at.ToDatetime().isoformat(sep=" ", timespec="seconds")
            if job.HasField("created_at")
            else "-"
        )
        table.add_row(
            job.job_id,
            job_state_name(job.state),
            created,
            f"{job.width}x{job.height}",
            Text(job.prompt),
        )
    return table


def _stage_mark(run: pb.StageRun, reused: set[str]) -> str:
    if run.stage in reused:
        return "reused"
    return "cached" if run.cache_hit else ""


def versions_table(versions: list[pb.Job]) -> Table:
    """Every version of a job with its stages: which were reused from the
    previous version (before rerun_from) or came from the stage cache, the
    output each made, and the typography check where one ran."""
    from stageflow.client.recipe import reused_stages

    table = Table(title="versions", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for header in ("version", "stage", "state", "model", "reused/cached", "output", "text check"):
        table.add_column(header, no_wrap=header != "text check")
    for job in versions:
        reused = set(reused_stages(job))
        label = f"v{job.version or 1}" + (f" (from {job.rerun_from})" if job.rerun_from else "")
        for i, run in enumerate(job.stages):
            check = ""
            if run.HasField("text_check"):
                c = run.text_check
                check = f"{c.ocr_text!r} CER {c.cer:.3f}, {c.attempts} attempt(s)"
                check += ", fell back" if c.fell_back else ""
            table.add_row(
                Text(label if i == 0 else ""),
                run.stage,
                stage_state_name(run.state),
                Text(run.model.name or "-"),
                _stage_mark(run, reused),
                run.output.sha256[:12] or "-",
                Text(check),
            )
    return table
