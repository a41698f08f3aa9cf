"""Submit, watch, download, report: the one flow behind `submit`, `watch` and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from stageflow.cli.render import (
    StageProgress,
    job_dict,
    job_state_name,
    text_check_lines,
    timing_table,
    to_json,
    warning_lines,
)
from stageflow.cli.telemetry import tag_job
from stageflow.client import StageflowClient
from stageflow.v1 import orchestrator_pb2 as pb

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class JobSpec:
    """What to generate: the keywords of StageflowClient.submit."""

    base: str
    style: str
    text: str = ""
    negative: str = ""
    seed: int = 42
    # None: the base model's default size (its Describe `defaults`).
    width: int | None = None
    height: int | None = None
    base_options: dict[str, Any] = field(default_factory=dict)
    refine_options: dict[str, Any] = field(default_factory=dict)
    upscale_options: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    # Stage order; empty: the pipeline spec's (base, refine, upscale; with
    # overlay text, base, upscale, refine).
    stages: tuple[str, ...] = ()
    # Pipeline spec name; empty: the orchestrator's "default".
    pipeline: str = ""


# The reference workflow's bundle shape (base, style, overlay text) with a base
# prompt the trained fixture model knows: a 128 px base, upscaled x4 by
# Real-ESRGAN to a 512 px final, where a red circle on a blue background must
# be visible. The typography pass runs after the upscale, so the text is drawn
# and read back at the final size.
DEMO_SPEC = JobSpec(
    base="a red circle on a blue background",
    style="moody cinematic",
    text="Chapter One",
    seed=42,
    width=128,
    height=128,
    stages=("base", "upscale", "refine"),
)


@dataclass(frozen=True)
class Ui:
    """Where results (out) and progress/diagnostics (err) go; `as_json` keeps out parseable."""

    out: Console
    err: Console
    as_json: bool = False

    def say(self, message: str) -> None:
        """A diagnostic line on stderr; plain text, never rich markup."""
        self.err.print(Text(message), soft_wrap=True)

    def emit_json(self, value: Any) -> None:
        self.out.print(to_json(value), markup=False, highlight=False, soft_wrap=True)


class Interrupted(Exception):
    """Ctrl-C arrived while watching a job."""


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """Route Ctrl-C to `callback` inside the running loop (main thread only)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (RuntimeError, ValueError, NotImplementedError):
        yield  # not the main thread: Ctrl-C stays a KeyboardInterrupt
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def watch_until_done(client: StageflowClient, job_id: str, ui: Ui) -> pb.Job:
    """Follow a job with live stage bars until it ends; raises Interrupted on Ctrl-C."""

    async def consume() -> pb.Job | None:
        with StageProgress(ui.err, enabled=not ui.as_json) as bars:
            async for event in client.watch(job_id):
                bars.handle(event)
                if event.WhichOneof("event") == "finished":
                    return event.finished
        return None

    interrupted = False
    task = asyncio.create_task(consume())

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    with _on_sigint(interrupt):
        try:
            finished = await task
        except asyncio.CancelledError:
            if not interrupted:
                raise
            raise Interrupted(job_id) from None
    # The stream ended without a `finished` event: ask for the job as it stands.
    return finished if finished is not None else await client.get(job_id)


async def follow(
    client: StageflowClient,
    job_id: str,
    *,
    out_dir: Path | None,
    ui: Ui,
    cancel_on_interrupt: bool = True,
    versioned: bool = False,
) -> int:
    """Watch a job to its end, download its final image into out_dir, report; the exit code.

    The file is `<job>.png`, or with `versioned` (a rerun) `<job>-v<N>.png`
    beside the earlier versions' files, never over an existing file.
    Ctrl-C cancels the job when `cancel_on_interrupt` (the job this command
    started), else only stops watching it (`stageflow watch` of any job)."""
    try:
        job = await watch_until_done(client, job_id, ui)
    except Interrupted:
        if not cancel_on_interrupt:
            ui.say(
                f"interrupted: stopped watching job {job_id}; it keeps running "
                f"(`stageflow watch {job_id} --cancel` cancels it on Ctrl-C)"
            )
            return EXIT_INTERRUPTED
        cancelled = await client.cancel(job_id)
        ui.say(f"interrupted: cancelled job {job_id} ({job_state_name(cancelled.state)})")
        return EXIT_INTERRUPTED
    path: Path | None = None
    if job.state == pb.JOB_STATE_SUCCEEDED and out_dir is not None:
        # Through the orchestrator (GetArtifact), verified: no store, no URL.
        if versioned:
            path = free_path(out_dir / f"{job.job_id}-v{job.version or 1}.png")
        else:
            path = out_dir / f"{job.job_id}.png"
        await client.fetch_final(job, path=path)  # carries its recipe
    if ui.as_json:
        ui.emit_json({"job": job_dict(job), "final_path": str(path) if path else None})
    else:
        ui.out.print(timing_table(job))
        for line in text_check_lines(job):
            ui.out.print(Text(line))
        for line in warning_lines(job):
            ui.say(line)
        if path is not None:
            ui.out.print(Text(f"final image: {path}"), soft_wrap=True)  # one line, for scripts
    if job.state == pb.JOB_STATE_SUCCEEDED:
        return 0
    if job.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        ui.say(f"job {job.job_id} {job_state_name(job.state)}: {job.error or 'no reason given'}")
    else:
        ui.say(f"watching job {job.job_id} ended while it was {job_state_name(job.state)}")
    return 1


def free_path(path: Path) -> Path:
    """`path`, or `<stem>-2<suffix>`, `-3`, ... when it exists: a download
    never replaces a file someone already has."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


async def submit_and_follow(
    client: StageflowClient, spec: JobSpec, *, out_dir: Path | None, wait: bool, ui: Ui
) -> int:
    """Submit a job; unless told not to wait, follow it to the end (see `follow`)."""
    job = await client.submit(**dataclasses.asdict(spec))
    tag_job(job.job_id)  # the command's root span, and the calls after it
    if not wait:
        if ui.as_json:
            ui.emit_json({"job": job_dict(job), "final_path": None})
        else:
            ui.out.print(Text(f"submitted job {job.job_id} ({job_state_name(job.state)})"))
            ui.out.print(
                Text(f"follow it with: stageflow watch {job.job_id} --address {client.address}")
            )
        return 0
    if not ui.as_json:
        ui.say(f"submitted job {job.job_id}")
    return await follow(client, job.job_id, out_dir=out_dir, ui=ui)
