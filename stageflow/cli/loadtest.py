"""`stageflow loadtest`: the command line over `stageflow.cli.loadgen`, and the tables."""

from __future__ import annotations

import contextlib
import enum
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from stageflow.cli.loadgen import LiveCounts, LoadConfig


class ArrivalChoice(enum.StrEnum):
    poisson = "poisson"
    fixed = "fixed"


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height or width)
    except ValueError:
        raise typer.BadParameter(f"expected N or WxH, got {text!r}") from None


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The report for people: summary, latency, server split, client cost."""
    summary = Table(title=f"loadtest {report['config']['job_id']}", show_header=False)
    summary.add_row("target", f"{report['config']['kind']} at {report['config']['address']}")
    summary.add_row("requests", f"{report['requests']} ({report['ok']} OK)")
    errors = ", ".join(f"{code} {n}" for code, n in report["errors"].items()) or "none"
    summary.add_row("errors", errors)
    for code, detail in report["error_details"].items():
        summary.add_row(f"  first {code}", detail[:200])
    summary.add_row("window", f"{report['duration_s']:.2f} s")
    summary.add_row("throughput", f"{report['throughput_rps']:.2f} req/s")

    latency = Table(title="latency of OK requests (ms, client side)")
    for name in ("p50", "p90", "p99", "max", "mean"):
        latency.add_column(name, justify="right")
    latency.add_row(*(_ms(report["latency_ms"][n]) for n in ("p50", "p90", "p99", "max", "mean")))

    where = (
        "summed over each job's stages"
        if report["config"]["kind"] == "orchestrator"
        else "the stage's timing"
    )
    server = Table(title=f"server split (ms, {where})")
    server.add_column("phase")
    server.add_column("median", justify="right")
    server.add_column("mean", justify="right")
    for phase, values in report["server_ms"].items():
        server.add_row(phase.removesuffix("_ms"), _ms(values["median"]), _ms(values["mean"]))

    client = report["client"]
    cost = Table(title="the load tester itself", show_header=False)
    cost.add_row("client processes", str(client["processes"]))
    cost.add_row("requests sent (with warm-up)", str(client["sent"]))
    cost.add_row("client CPU per request", f"{client['cpu_per_request_ms']:.2f} ms")
    cost.add_row("client CPU use", f"{client['cpu_utilisation'] * 100:.0f}% of one core")
    if report["config"]["rate"]:
        cost.add_row("worst send lag", f"{client['max_send_lag_ms']:.1f} ms")
    return [summary, latency, server, cost]


@contextlib.contextmanager
def _live_bar(err: Console, config: LoadConfig) -> Iterator[LiveCounts]:
    """A live bar on stderr while the load runs: elapsed time (against warm-up
    plus duration), requests finished, errors and the rate over the last
    second. Off when stderr is not a terminal (scripts get the report alone)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stageflow.cli.loadgen import LiveCounts

    live = LiveCounts()
    if not err.is_terminal:
        yield live
        return
    total = config.warmup_s + (config.duration_s or 0) if config.duration_s else None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    stop = threading.Event()
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("warm-up" if config.warmup_s else "load", total=total, stats="")
        started = time.monotonic()

        def tick() -> None:
            window: list[tuple[float, int]] = []
            while not stop.wait(0.25):
                now = time.monotonic()
                window = [(t, n) for t, n in window if now - t <= 1.0] + [(now, live.done)]
                span = window[-1][0] - window[0][0]
                rate = (window[-1][1] - window[0][1]) / span if span > 0 else 0.0
                progress.update(
                    task,
                    completed=now - started if total else None,
                    description="measuring" if live.measuring else "warm-up",
                    stats=f"{live.done} requests, {live.errors} errors, {rate:.1f}/s"
                    if config.processes == 1
                    else f"{config.processes} client processes (counts in the report)",
                )

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield live
        finally:
            stop.set()
            thread.join()


def loadtest(
    address: Annotated[
        str, typer.Option("--address", help="The stage's (or orchestrator's) host:port.")
    ],
    kind: Annotated[
        str,
        typer.Option(
            help="Stage kind (txt2img, refine, upscale, or another registered kind), or "
            "orchestrator for whole jobs."
        ),
    ],
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE of the kind's params (steps=10, mode=lanczos); for orchestrator "
            "width/height or STAGE.FIELD (base.steps=10). Repeatable.",
        ),
    ] = None,
    width: Annotated[int | None, typer.Option(help="Output width (txt2img, orchestrator).")] = None,
    height: Annotated[
        int | None, typer.Option(help="Output height (txt2img, orchestrator).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps (base steps for jobs).")
    ] = None,
    prompt: Annotated[str, typer.Option(help="Prompt of every request.")] = "a load test",
    input_size: Annotated[
        str, typer.Option(help="Input image N or WxH for refine/upscale, seeded once.")
    ] = "64",
    store_url: Annotated[
        str | None,
        typer.Option(
            envvar="STAGEFLOW_STORE_URL",
            help="The stage's store, to seed refine/upscale inputs: file:///path or "
            "s3://bucket?endpoint=http://h:p (keys from STAGEFLOW_S3_ACCESS_KEY/SECRET_KEY).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed loop: requests in flight.")] = 1,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: requests per second (replaces concurrency).")
    ] = None,
    arrival: Annotated[ArrivalChoice, typer.Option(help="Open-loop gaps.")] = ArrivalChoice.poisson,
    duration: Annotated[
        float | None, typer.Option(help="Measured seconds (default 10 unless --requests).")
    ] = None,
    requests: Annotated[int | None, typer.Option(min=1, help="Measured request count.")] = None,
    warmup: Annotated[float, typer.Option(min=0, help="Unmeasured seconds first.")] = 0.0,
    processes: Annotated[int, typer.Option(min=1, help="Client processes, one loop each.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Fixed seed (default: varied).")] = None,
    timeout: Annotated[float, typer.Option(help="Per-request deadline, seconds.")] = 120.0,
    job_id: Annotated[str, typer.Option(help="Job id sent with every request.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write latency charts (PNG) here.")] = None,
) -> None:
    """Load-test one stage (or the orchestrator): throughput, latency percentiles,
    errors by status code and the server's own time split."""
    from stageflow.cli.loadgen import (
        ORCHESTRATOR,
        LoadConfig,
        LoadTestError,
        load_kinds,
        needs_input,
        parse_sets,
        run_load,
        seed_input,
    )
    from stageflow.cli.main import EXIT_FAILURE, EXIT_USAGE, _expected_errors, _fail

    err = Console(stderr=True)
    if duration is not None and requests is not None:
        _fail("error: give --duration or --requests, not both", EXIT_USAGE)
    if kind not in load_kinds():
        _fail(f"error: --kind must be one of {', '.join(load_kinds())}, got {kind!r}", EXIT_USAGE)
    with _expected_errors():
        params = parse_sets(kind, sets or [])
        explicit = {"width": width, "height": height}
        explicit["base.steps" if kind == ORCHESTRATOR else "steps"] = steps
        params.update({k: v for k, v in explicit.items() if v is not None})
        image = None
        if needs_input(kind):
            if not store_url:
                _fail(f"error: --store-url is needed to seed {kind} inputs", EXIT_USAGE)
            from stageflow.cli.settings import S3Keys, from_environment
            from stageflow.core.storage import open_store

            keys = from_environment(S3Keys)
            try:
                store = open_store(
                    store_url,
                    access_key=keys.s3_access_key,
                    secret_key=keys.s3_secret_key.get_secret_value(),
                    region=keys.s3_region,
                )
            except ValueError as exc:  # a malformed URL or bucket name
                _fail(f"error: --store-url: {exc}", EXIT_USAGE)
            image = seed_input(store, *_size(input_size))
        config = LoadConfig(
            address=address,
            kind=kind,
            params=params,
            prompt=prompt,
            image=image,
            concurrency=concurrency,
            rate=rate,
            arrival=arrival.value,
            duration_s=10.0 if duration is None and requests is None else duration,
            requests=requests,
            warmup_s=warmup,
            processes=processes,
            seed=seed,
            job_id=job_id,
            timeout_s=timeout,
        )
        err.print(Text(f"load-testing {kind} at {address} ..."))
        try:
            with _live_bar(err, config) as live:
                report = run_load(config, live)
        except LoadTestError as exc:
            _fail(f"error: {exc}", EXIT_FAILURE)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if plot is not None:
        from stageflow.cli.loadplot import plot_report

        plot_report(report, plot)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console = Console()
        for table in report_tables(report):
            console.print(table)
    if not report["ok"]:
        # A run where nothing succeeded measured nothing: say so, and fail.
        codes = ", ".join(f"{code} {n}" for code, n in report["errors"].items()) or "none"
        _fail(
            f"error: none of {report['requests']} requests succeeded (errors: {codes})",
            EXIT_FAILURE,
        )
