"""`stageflow batch`: the reference workflow's "xargs over prompts.txt", done properly.

Every line of a JSONL file is one prompt bundle. All lines are parsed before
anything is submitted; each job's idempotency key is the file's content hash
plus its line number, so running the same file again after a crash finds the
jobs already submitted instead of starting them twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stageflow.cli.jobs import JobSpec, Ui
from stageflow.cli.render import job_state_name
from stageflow.client import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StageflowClient,
    StageflowClientError,
    Unavailable,
)
from stageflow.v1 import orchestrator_pb2 as pb

# Keys of a bundle line -> JobSpec field (None: the same name).
_TEXT_KEYS = {"base": None, "style": None, "text": None, "negative": None, "pipeline": None}
_INT_KEYS = {"seed", "width", "height"}
_OPTION_KEYS = {
    "base_options": "base_options",
    "refine_options": "refine_options",
    "upscale_options": "upscale_options",
}
KNOWN_KEYS = sorted({*_TEXT_KEYS, *_INT_KEYS, *_OPTION_KEYS, "stages", "options"})
# The orchestrator being restarted is a pause, not a failure: keep retrying this long.
RECONNECT_SECONDS = 120.0
# An orchestrator never reached at all is a mistyped address: give up this soon.
CONNECT_SECONDS = 8.0
# Attempts at downloading one final image that arrives corrupted or cannot be
# written (an orchestrator that is restarting is waited for, as RECONNECT_SECONDS says).
DOWNLOAD_ATTEMPTS = 5
# A line the orchestrator rejects: the file is wrong, nothing was submitted.
EXIT_REJECTED = 2
_RETRYABLE = (Unavailable, DeadlineExceeded)
_DOWNLOAD_FAILURES = (DataLoss, OSError)


class BatchFileError(ValueError):
    """A line of the bundle file is not a valid bundle; the message names the line."""


class OrchestratorUnreachable(ConnectionError):
    """The orchestrator did not answer at all before the batch started."""


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based line number in the file
    spec: JobSpec


def _bundle(line: int, value: Any) -> JobSpec:
    if not isinstance(value, dict):
        raise BatchFileError(f"line {line}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(KNOWN_KEYS))
    if unknown:
        raise BatchFileError(f"line {line}: unknown keys {unknown}; known: {KNOWN_KEYS}")
    if not isinstance(value.get("base"), str) or not value["base"].strip():
        raise BatchFileError(f"line {line}: 'base' (what to draw) is required, a non-empty string")
    fields: dict[str, Any] = {}
    for key in _TEXT_KEYS:
        if key in value:
            if not isinstance(value[key], str):
                raise BatchFileError(f"line {line}: {key!r} must be a string")
            fields[key] = value[key]
    for key in _INT_KEYS:
        if key in value:
            if isinstance(value[key], bool) or not isinstance(value[key], int):
                raise BatchFileError(f"line {line}: {key!r} must be an integer")
            fields[key] = value[key]
    if "stages" in value:
        stages = value["stages"]
        if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
            raise BatchFileError(f"line {line}: 'stages' must be a list of stage names")
        fields["stages"] = tuple(stages)
    # Either base_options/refine_options/... or "options": {"base": {...}, ...}.
    nested = value.get("options", {})
    if not isinstance(nested, dict):
        raise BatchFileError(f"line {line}: 'options' must be an object")
    for stage in nested:
        if f"{stage}_options" not in _OPTION_KEYS:
            raise BatchFileError(f"line {line}: options.{stage}: not a stage with options")
    for key, field in _OPTION_KEYS.items():
        options = value.get(key, nested.get(key.removesuffix("_options"), {}))
        if not isinstance(options, dict):
            raise BatchFileError(f"line {line}: {key!r} must be an object")
        fields[field] = dict(options)
    fields.setdefault("style", "")
    return JobSpec(**fields)


def parse_bundles(data: bytes) -> list[BatchLine]:
    """Every non-blank line as a bundle with its request id; BatchFileError names a bad line."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    lines: list[BatchLine] = []
    for number, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BatchFileError(f"line {number}: not valid JSON: {err.msg}") from None
        spec = dataclasses.replace(_bundle(number, value), request_id=f"batch-{digest}-{number}")
        lines.append(BatchLine(number, spec))
    if not lines:
        raise BatchFileError("the file holds no bundles")
    return lines


async def _retrying(what: str, call: Any, ui: Ui) -> Any:
    """Await `call()`, retrying UNAVAILABLE (a restarting orchestrator) with backoff."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECONNECT_SECONDS
    delay = 0.2
    while True:
        try:
            return await call()
        except _RETRYABLE as err:
            if loop.time() + delay > deadline:
                raise
            ui.say(f"{what}: {err.status}, retrying in {delay:.1f}s")
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 5.0)


async def _finished(client: StageflowClient, job_id: str) -> pb.Job:
    """Follow a job to its end (the last event of WatchJob)."""
    job: pb.Job | None = None
    async for event in client.watch(job_id):
        kind = event.WhichOneof("event")
        if kind == "finished":
            return event.finished
        if kind == "snapshot":
            job = event.snapshot
    state = job_state_name(job.state) if job is not None else "unknown"
    raise Unavailable(f"watch of job {job_id} ended while it was {state}")


async def _download(client: StageflowClient, job: pb.Job, path: Path, ui: Ui, what: str) -> None:
    """The final image into `path`, verified; retried, since a batch that
    cannot deliver its images has not succeeded. An orchestrator that cannot
    be reached (restarting) is waited for as long as a submit or a watch waits
    for it; a download that arrives corrupted or cannot be written is tried
    DOWNLOAD_ATTEMPTS times."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECONNECT_SECONDS
    delay, failures = 0.2, 0
    while True:
        try:
            await client.fetch_final(job, path=path)
            return
        except _RETRYABLE as err:
            if loop.time() + delay > deadline:
                raise
            ui.say(f"{what}: download failed ({err}), retrying in {delay:.1f}s")
        except _DOWNLOAD_FAILURES as err:
            failures += 1
            if failures == DOWNLOAD_ATTEMPTS:
                raise
            ui.say(f"{what}: download failed ({err}), retrying in {delay:.1f}s")
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 5.0)


async def _run_line(
    client: StageflowClient, item: BatchLine, priority: int, out_dir: Path | None, ui: Ui
) -> dict[str, Any]:
    """One line to its end. `status` is the line's outcome: the job's final
    state, "download_failed" when it succeeded but its final image was not
    written, or "error" when it could not be submitted or followed."""
    summary: dict[str, Any] = {"line": item.line, "job_id": "", "final_key": "", "status": ""}
    summary.update(final_path=None, error="")
    what = f"line {item.line}"
    try:
        # Resubmitting after a lost connection is safe: the request id is the same.
        submitted = await _retrying(
            what, lambda: client.submit(**dataclasses.asdict(item.spec), priority=priority), ui
        )
        summary["job_id"] = submitted.job_id
        job: pb.Job = await _retrying(what, lambda: _finished(client, submitted.job_id), ui)
        summary["status"] = job_state_name(job.state)
        summary["error"] = job.error
        if job.state == pb.JOB_STATE_SUCCEEDED:
            summary["final_key"] = job.final.key
            if out_dir is not None:
                path = out_dir / f"line{item.line:05d}-{job.job_id}.png"
                try:
                    await _download(client, job, path, ui, what)
                except (StageflowClientError, OSError) as err:
                    summary["status"] = "download_failed"
                    summary["error"] = f"the final image was not written: {err}"
                else:
                    summary["final_path"] = str(path)
    except StageflowClientError as err:
        summary["status"] = summary["status"] or "error"
        summary["error"] = str(err)
    except Exception as err:  # one bad line must not sink the batch
        summary["status"] = summary["status"] or "error"
        summary["error"] = str(err)
    return summary


async def check_lines(
    client: StageflowClient, lines: list[BatchLine], *, priority: int, concurrency: int
) -> list[str]:
    """Every line checked by the orchestrator as its submit would be (ranges
    against the stages' limits included), storing nothing: one message per
    rejected line, in file order. Raises OrchestratorUnreachable when the
    orchestrator does not answer within CONNECT_SECONDS."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONNECT_SECONDS
    gate = asyncio.Semaphore(concurrency)

    async def check(item: BatchLine) -> str | None:
        async with gate:
            delay = 0.2
            while True:
                try:
                    await asyncio.wait_for(
                        client.submit(
                            **dataclasses.asdict(item.spec), priority=priority, validate_only=True
                        ),
                        timeout=max(0.1, give_up - loop.time()),
                    )
                    return None
                except (InvalidArgument, FailedPrecondition, NotFound) as err:
                    # The line itself is wrong (a field, its spec's model, its pipeline).
                    return f"line {item.line}: {err}"
                except (*_RETRYABLE, TimeoutError) as err:
                    if loop.time() + delay > give_up:
                        raise OrchestratorUnreachable(
                            f"cannot reach the orchestrator at {client.address} "
                            f"({type(err).__name__}: {err}); nothing was submitted"
                        ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    found = await asyncio.gather(*(check(item) for item in lines))
    return [problem for problem in found if problem is not None]


def _write_summary(path: Path, summaries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s) + "\n" for s in summaries))


async def run_batch(
    client: StageflowClient,
    lines: list[BatchLine],
    *,
    concurrency: int,
    priority: int,
    out_dir: Path | None,
    summary_path: Path,
    ui: Ui,
) -> int:
    """Check every line first (EXIT_REJECTED, nothing submitted, when any is
    rejected), then submit and follow them, at most `concurrency` at once;
    write one summary line per input line (in file order). 0 when every job
    succeeded and, with `out_dir`, every final image was written."""
    if out_dir is not None:
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    gate = asyncio.Semaphore(concurrency)
    progress = Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=ui.err,
        transient=ui.as_json,
    )

    problems = await check_lines(client, lines, priority=priority, concurrency=concurrency)
    if problems:
        for problem in problems:
            ui.say(problem)
        ui.say(f"{len(problems)} of {len(lines)} lines rejected; nothing was submitted")
        return EXIT_REJECTED

    async def one(item: BatchLine) -> dict[str, Any]:
        async with gate:
            summary = await _run_line(client, item, priority, out_dir, ui)
        failed = summary["status"] != "succeeded"
        progress.update(task, advance=1, failed=progress.tasks[task].fields["failed"] + failed)
        return summary

    with progress:
        task = progress.add_task("batch", total=len(lines), failed=0)
        summaries = await asyncio.gather(*(one(item) for item in lines))
    await asyncio.to_thread(_write_summary, summary_path, summaries)
    succeeded = sum(s["status"] == "succeeded" for s in summaries)
    undelivered = sum(s["status"] == "download_failed" for s in summaries)
    note = f" ({undelivered} final images not written)" if undelivered else ""
    ui.say(f"{succeeded} of {len(summaries)} jobs succeeded{note}; summary: {summary_path}")
    return 0 if succeeded == len(summaries) else 1
