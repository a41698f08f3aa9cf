"""The `stageflow` command.

Heavy modules (grpc, the cluster, torch via the fixtures) are imported inside
the commands so `stageflow --help` answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stageflow.cli.keys import keys_app
from stageflow.cli.loadtest import loadtest
from stageflow.cli.models import models_app

if TYPE_CHECKING:
    from stageflow.cli.cluster import LocalCluster
    from stageflow.cli.jobs import Ui
    from stageflow.client import StageflowClient

app = typer.Typer(
    name="stageflow",
    help="Staged text-to-image generation (base -> refine -> upscale) over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(
    log_level: Annotated[
        str,
        typer.Option(
            envvar="STAGEFLOW_LOG_LEVEL",
            help="Log lines at this level and above go to stderr (DEBUG, INFO, WARNING, "
            "ERROR); results alone go to stdout.",
        ),
    ] = "WARNING",
) -> None:
    """Staged text-to-image generation (base -> refine -> upscale) over gRPC."""
    try:
        from stageflow.core.logging import configure_logging
    except ImportError:  # the slim client install has no structlog: nothing logs
        return
    try:
        configure_logging(level=log_level)
    except ValueError as err:
        _fail(f"error: --log-level: {err}", EXIT_USAGE)


app.add_typer(models_app, name="models", no_args_is_help=True)
app.add_typer(keys_app, name="keys", no_args_is_help=True)
app.command()(loadtest)

# gRPC statuses that mean "you asked for something wrong", as opposed to "it broke".
USAGE_STATUSES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
DEFAULT_ADDRESS = "127.0.0.1:50051"

Address = Annotated[
    str,
    typer.Option("--address", envvar="STAGEFLOW_ADDRESS", help="Orchestrator host:port."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ModelsDir = Annotated[
    Path | None,
    typer.Option(
        help="A folder laid out like `stageflow models build-fixtures` output "
        "(default: the committed trained fixtures in fixtures/trained)."
    ),
]


class UpscaleModeChoice(enum.StrEnum):
    learned = "learned"
    lanczos = "lanczos"


class StateChoice(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _ui(as_json: bool = False) -> Ui:
    from stageflow.cli.jobs import Ui

    out = Console()
    if not out.is_terminal:  # piped or captured: do not squeeze tables to 80 columns
        out = Console(width=120)
    return Ui(out=out, err=Console(stderr=True), as_json=as_json)


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(Text(message), soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _expected_errors(address: str | None = None) -> Iterator[None]:
    """Expected failures become one line on stderr and an exit code, never a traceback."""
    import grpc

    from stageflow.cli.cluster import ClusterError
    from stageflow.client.errors import StageflowClientError
    from stageflow.core.errors import StageflowError

    try:
        yield
    except StageflowClientError as err:
        message = str(err)
        if err.status == "UNAVAILABLE" and address:
            message += f" (is an orchestrator running at {address}? `stageflow up` starts one)"
        _fail(message, EXIT_USAGE if err.status in USAGE_STATUSES else EXIT_FAILURE)
    except grpc.RpcError as err:
        code = err.code().name if hasattr(err, "code") else "UNKNOWN"
        details = err.details() if hasattr(err, "details") else str(err)
        if code == "UNAVAILABLE" and address:
            details = (
                f"{details} (is an orchestrator running at {address}? `stageflow up` starts one)"
            )
        _fail(f"{code}: {details}", EXIT_USAGE if code in USAGE_STATUSES else EXIT_FAILURE)
    except StageflowError as err:
        _fail(
            f"{err.code}: {err.message}", EXIT_USAGE if err.code in USAGE_STATUSES else EXIT_FAILURE
        )
    except ClusterError as err:
        _fail(f"error: {err}", EXIT_FAILURE)
    except OSError as err:
        _fail(f"error: {err}", EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


def _with_client(
    address: str,
    body: Callable[[StageflowClient], Awaitable[int]],
    *,
    command: str,
    job_id: str = "",
) -> NoReturn:
    """Run `body` with a client in a fresh event loop, then exit with its code.

    The command is one root span (`cli <command>`) when STAGEFLOW_TRACING_EXPORTER
    is set and the serving extra is installed, so a job's trace starts where the
    person or script asked for it.
    """
    from stageflow.cli import telemetry
    from stageflow.client import StageflowClient

    async def main() -> int:
        with telemetry.command_span(command, job_id):
            interceptors = telemetry.client_interceptors()
            async with StageflowClient(address, interceptors=interceptors) as client:
                return await body(client)

    with _expected_errors(address):
        stop_tracing = telemetry.start("cli")
        try:
            code = asyncio.run(main())
        finally:
            stop_tracing()
    raise typer.Exit(code)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut an orderly shutdown short and orphan children."""
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_addresses(cluster: LocalCluster, out: Console) -> None:
    table = Table(title="stageflow is up")
    table.add_column("process")
    table.add_column("address")
    table.add_column("metrics")
    table.add_column("log")
    for name, address in cluster.addresses.items():
        table.add_row(name, address, cluster.metrics_url(name), str(cluster.log_path(name)))
    out.print(table)


# -- cluster ------------------------------------------------------------------


@app.command()
def up(
    state_dir: Annotated[
        Path, typer.Option(help="Logs, ports, SQLite and the local store.")
    ] = Path("var"),
    models_dir: ModelsDir = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            help="file:///path or s3://bucket?endpoint=http://h:p; S3 keys come from "
            "STAGEFLOW_S3_ACCESS_KEY / STAGEFLOW_S3_SECRET_KEY."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Orchestrator port (0: any free one).")] = 50051,
    threads: Annotated[int, typer.Option(help="Torch threads per stage.")] = 1,
    gateway_port: Annotated[
        int, typer.Option(help="HTTP gateway port (0: any free one; -1: no gateway).")
    ] = 8080,
) -> None:
    """Start the three stages, the orchestrator and the HTTP gateway on loopback;
    Ctrl-C stops them. Authentication is off: every caller sees every job."""
    from stageflow.cli.cluster import LocalCluster
    from stageflow.serving.processes import signals_interrupt

    if store_url:
        from stageflow.core.storage import parse_store_url

        try:
            parse_store_url(store_url)  # a bad URL is a usage error here, not in every child
        except ValueError as err:
            _fail(f"error: --store-url: {err}", EXIT_USAGE)
    ui = _ui()
    cluster = LocalCluster(
        state_dir=state_dir,
        models_dir=models_dir,
        store_url=store_url,
        orchestrator_port=port,
        torch_threads=threads,
        gateway_port=gateway_port if gateway_port >= 0 else None,
    )
    code = 0
    # SIGTERM and SIGHUP behave like Ctrl-C, so `kill` and a closed terminal also
    # stop the children in order (a SIGKILL leaves it to their parent-death signal).
    with signals_interrupt(), _expected_errors():
        ui.say(f"starting stages and orchestrator (logs in {cluster.state_dir / 'logs'}) ...")
        try:
            cluster.start()
            _print_addresses(cluster, ui.out)
            if cluster.gateway_port is not None:
                ui.out.print(Text(f"gateway: {cluster.gateway_url} (API docs: /docs)"))
                ui.out.print(Text(f"workspace: {cluster.gateway_url.rstrip('/')}/"))
            ui.out.print(Text(f"export STAGEFLOW_ADDRESS={cluster.orchestrator_address}"))
            ui.out.print(
                Text(
                    "authentication is OFF (embedded cluster): any local caller can read "
                    "and cancel every job"
                )
            )
            ui.out.print(
                Text(
                    f"submit a job: stageflow submit --address {cluster.orchestrator_address} "
                    '--base "a red circle on a blue background" --style "moody cinematic"\n'
                    "stop with Ctrl-C"
                )
            )
            code = _wait_for_exit(cluster, ui)
        finally:
            with _signals_ignored():
                with contextlib.suppress(OSError):  # a hung-up terminal
                    ui.say("stopping ...")
                cluster.stop()
    raise typer.Exit(code)


def _wait_for_exit(cluster: LocalCluster, ui: Ui) -> int:
    """Block until Ctrl-C/SIGTERM/SIGHUP (0) or until a child dies on its own (1)."""
    try:
        while True:
            for name in cluster.addresses:
                rc = cluster.process(name).poll()
                if rc is not None:
                    ui.say(f"{name} exited with status {rc}; see {cluster.log_path(name)}")
                    return EXIT_FAILURE
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


# The demo's upscaler: Real-ESRGAN x4plus' released weights, which `make setup`
# imports into models/repository (the Makefile's `realesrgan` target).
DEMO_UPSCALER = "realesrgan-x4plus@1"
DEMO_REPOSITORY = Path("models/repository")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the final PNG goes.")] = Path("out"),
    state_dir: Annotated[Path, typer.Option(help="The demo cluster's state.")] = Path("var/demo"),
    models_dir: ModelsDir = None,
    upscaler: Annotated[
        str,
        typer.Option(
            help="name@version the upscale stage serves from --model-repository "
            "(Real-ESRGAN x4plus, which `make setup` imports); empty: the fixture upscaler."
        ),
    ] = DEMO_UPSCALER,
    model_repository: Annotated[
        Path, typer.Option(help="The model repository folder --upscaler is read from.")
    ] = DEMO_REPOSITORY,
) -> None:
    """Start a local cluster, run the reference prompt through all stages, stop."""
    from stageflow.cli.cluster import LocalCluster
    from stageflow.cli.jobs import DEMO_SPEC, submit_and_follow
    from stageflow.client import StageflowClient

    ui = _ui()
    code = EXIT_FAILURE
    with _expected_errors():
        stage_args = {"upscale": _demo_upscaler(upscaler, model_repository)} if upscaler else {}
        cluster = LocalCluster(
            state_dir=state_dir,
            models_dir=models_dir,
            orchestrator_port=0,
            # Real-ESRGAN x4plus is ~18 GMAC per input pixel: let it use a few cores.
            torch_threads=min(4, os.cpu_count() or 1),
            stage_args=stage_args,
        )
        ui.say(f"starting a local cluster (logs in {cluster.state_dir / 'logs'}) ...")
        try:
            cluster.start()
            ui.say(f"orchestrator at {cluster.orchestrator_address}")

            async def run() -> int:
                async with StageflowClient(cluster.orchestrator_address) as client:
                    return await submit_and_follow(client, DEMO_SPEC, out_dir=out, wait=True, ui=ui)

            code = asyncio.run(run())
        finally:
            with _signals_ignored():
                cluster.stop()
    raise typer.Exit(code)


def _demo_upscaler(model: str, repository: Path) -> list[str]:
    """The upscale stage's flags to serve `model` from `repository`, checked
    first: a missing import is one line naming the fix, before any process starts."""
    from stageflow.core.errors import NotFound
    from stageflow.inference.repository import ModelRepository, parse_ref

    name, version = parse_ref(model, "upscaler")
    try:
        ModelRepository(repository).get(name, version)
    except NotFound as err:
        raise NotFound(
            f"{err.message}. `make setup` imports Real-ESRGAN there; "
            "or pass --upscaler '' for the fixture upscaler"
        ) from None
    return ["--model-repository", str(repository.resolve()), "--model", model]


# -- jobs ---------------------------------------------------------------------


def _drop_unset(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def submit(
    base: Annotated[str, typer.Option(help="What to draw.")],
    style: Annotated[str, typer.Option(help="How it should look.")],
    text: Annotated[str, typer.Option(help="Overlay text (enables the inpaint pass).")] = "",
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    seed: int = 42,
    # Unset: the base model's own default (its native side: 32 for the trained
    # fixture, 512 for a real SD 1.5), the one every caller gets.
    width: Annotated[
        int | None, typer.Option(help="Base width; the final is 4x (default: the model's).")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Base height; the final is 4x (default: the model's).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Base denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Base guidance scale.")] = None,
    refine_strength: Annotated[float | None, typer.Option(help="Refine strength 0..1.")] = None,
    refine_steps: Annotated[int | None, typer.Option(help="Refine denoising steps.")] = None,
    upscale_mode: Annotated[UpscaleModeChoice | None, typer.Option(help="Upscaler.")] = None,
    request_id: Annotated[str, typer.Option(help="Idempotency key.")] = "",
    stages: Annotated[
        str,
        typer.Option(
            help="Stage order, comma-separated, base first (default: the pipeline's, "
            "base,refine,upscale, or base,upscale,refine with --text)."
        ),
    ] = "",
    pipeline: Annotated[
        str, typer.Option(help="Pipeline spec on the orchestrator (pipelines/NAME.yaml).")
    ] = "",
    address: Address = DEFAULT_ADDRESS,
    out: Annotated[Path, typer.Option(help="Where the final PNG goes.")] = Path("out"),
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once submitted.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job, follow its stages, download the final PNG into --out."""
    from stageflow.cli.jobs import JobSpec, submit_and_follow

    spec = JobSpec(
        base=base,
        style=style,
        text=text,
        negative=negative,
        seed=seed,
        width=width,
        height=height,
        base_options=_drop_unset(steps=steps, guidance_scale=guidance),
        refine_options=_drop_unset(strength=refine_strength, steps=refine_steps),
        upscale_options=_drop_unset(mode=upscale_mode.value if upscale_mode else None),
        request_id=request_id,
        # The orchestrator validates the names and order (INVALID_ARGUMENT naming `stages`).
        stages=tuple(name.strip() for name in stages.split(",") if name.strip()),
        pipeline=pipeline,
    )
    ui = _ui(as_json)
    _with_client(
        address,
        lambda c: submit_and_follow(c, spec, out_dir=out, wait=not no_wait, ui=ui),
        command="submit",
    )


@app.command()
def watch(
    job_id: Annotated[str, typer.Argument(help="The job to follow.")],
    address: Address = DEFAULT_ADDRESS,
    out: Annotated[Path | None, typer.Option(help="Also download the final PNG here.")] = None,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Cancel the job on Ctrl-C (default: detach).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Follow a job's stages to the end (Ctrl-C stops watching; the job keeps running)."""
    from stageflow.cli.jobs import follow

    ui = _ui(as_json)
    _with_client(
        address,
        lambda c: follow(c, job_id, out_dir=out, ui=ui, cancel_on_interrupt=cancel),
        job_id=job_id,
        command="watch",
    )


@app.command()
def get(
    job_id: Annotated[str, typer.Argument(help="The job to show.")],
    address: Address = DEFAULT_ADDRESS,
    as_json: JsonFlag = False,
) -> None:
    """Show a job: its latest version, then every version with its stages
    (reused and cached ones marked, the typography check where one ran)."""
    from stageflow.cli.render import job_dict, job_summary, timing_table, versions_table

    ui = _ui(as_json)

    async def body(client: StageflowClient) -> int:
        versions = await client.versions(job_id)
        job = versions[-1]
        if as_json:
            # The latest version's fields at the top (as before), every version below.
            ui.emit_json({**job_dict(job), "versions": [job_dict(v) for v in versions]})
        else:
            ui.out.print(job_summary(job))
            ui.out.print(timing_table(job))
            ui.out.print(versions_table(versions))
        return 0

    _with_client(address, body, job_id=job_id, command="get")


@app.command("list")
def list_jobs(
    state: Annotated[StateChoice | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 20,
    address: Address = DEFAULT_ADDRESS,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    from stageflow.cli.render import job_dict, jobs_table

    ui = _ui(as_json)

    async def body(client: StageflowClient) -> int:
        jobs = await client.list(page_size=limit, state=state.value if state else None)
        if as_json:
            ui.emit_json([job_dict(j) for j in jobs])
        else:
            ui.out.print(jobs_table(jobs))
        return 0

    _with_client(address, body, command="list")


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job to cancel.")],
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Cancel a job (a finished job stays as it is)."""
    from stageflow.cli.render import job_state_name

    ui = _ui()

    async def body(client: StageflowClient) -> int:
        job = await client.cancel(job_id)
        ui.out.print(Text(f"job {job.job_id}: {job_state_name(job.state)}"))
        return 0

    _with_client(address, body, job_id=job_id, command="cancel")


@app.command()
def rerun(
    job_id: Annotated[str, typer.Argument(help="The finished job to rerun.")],
    from_stage: Annotated[
        str, typer.Option("--from", help="First stage to recompute (earlier ones are reused).")
    ],
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE override: a field of the from-stage's options "
            "(e.g. guidance_scale=9) or text/style/negative of the bundle. Repeatable.",
        ),
    ] = None,
    address: Address = DEFAULT_ADDRESS,
    out: Annotated[
        Path, typer.Option(help="Where the final PNG goes, as <job>-v<N>.png (never overwritten).")
    ] = Path("out"),
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once submitted.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make version N+1 of a job: reuse stages before --from, recompute the rest."""
    from stageflow.cli.jobs import follow
    from stageflow.cli.render import job_state_name
    from stageflow.cli.rerun import parse_sets
    from stageflow.cli.telemetry import tag_job

    with _expected_errors():
        overrides = parse_sets(from_stage, sets or [])
    ui = _ui(as_json)

    async def body(client: StageflowClient) -> int:
        job = await client.rerun(job_id, from_stage, **overrides.client_kwargs())
        tag_job(job.job_id)
        if not as_json:
            ui.say(f"job {job.job_id} version {job.version}: {job_state_name(job.state)}")
        if no_wait:
            return 0
        return await follow(client, job.job_id, out_dir=out, ui=ui, versioned=True)

    _with_client(address, body, job_id=job_id, command="rerun")


@app.command()
def fetch(
    job_id: Annotated[str, typer.Argument(help="The job whose image to download.")],
    version: Annotated[int, typer.Option(min=0, help="Job version (0: the latest).")] = 0,
    stage: Annotated[str, typer.Option(help="A stage's output instead of the final.")] = "",
    fmt: Annotated[
        str, typer.Option("--format", help="png, webp or jpeg (webp/jpeg need Pillow).")
    ] = "png",
    out: Annotated[
        Path | None,
        typer.Option(
            help="File to write (default ./<job>-v<N>[-<stage>].<ext>, never overwritten)."
        ),
    ] = None,
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Download a job's image through the API, carrying its recipe (prompt, seed, models)."""
    from stageflow.cli.export import check_format, default_name, write_new
    from stageflow.cli.export import fetch as fetch_image

    with _expected_errors():
        chosen = check_format(fmt)
    ui = _ui()

    async def body(client: StageflowClient) -> int:
        job, data = await fetch_image(client, job_id, version=version, stage=stage, fmt=chosen)
        path = write_new(out or Path(default_name(job, stage, chosen)), data)
        ui.out.print(Text(f"image: {path}"), soft_wrap=True)
        return 0

    _with_client(address, body, job_id=job_id, command="fetch")


@app.command()
def compare(
    job_id: Annotated[str, typer.Argument(help="The job whose versions to compare.")],
    versions: Annotated[str, typer.Option(help="Versions, comma-separated, e.g. 1,3.")],
    out: Annotated[
        Path | None, typer.Option(help="PNG to write (default ./<job>-compare-v1-v3.png).")
    ] = None,
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Write the versions' finals side by side, labelled with the parameters that differ."""
    from stageflow.cli.export import compare as montage
    from stageflow.cli.export import parse_versions, pillow, write_new

    with _expected_errors():
        chosen = parse_versions(versions)
        pillow("compare")
    ui = _ui()

    async def body(client: StageflowClient) -> int:
        data = await montage(client, job_id, chosen)
        name = f"{job_id}-compare-{'-'.join(f'v{v}' for v in chosen)}.png"
        path = write_new(out or Path(name), data)
        ui.out.print(Text(f"comparison: {path}"), soft_wrap=True)
        return 0

    _with_client(address, body, job_id=job_id, command="compare")


class PriorityChoice(enum.StrEnum):
    interactive = "interactive"
    bulk = "bulk"


@app.command()
def batch(
    bundles: Annotated[
        Path, typer.Argument(help="JSONL file: one prompt bundle (JSON object) per line.")
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs in flight at once.")] = 4,
    priority: Annotated[
        PriorityChoice, typer.Option(help="Scheduling lane on the orchestrator.")
    ] = PriorityChoice.bulk,
    address: Address = DEFAULT_ADDRESS,
    out: Annotated[Path, typer.Option(help="Where the final PNGs go.")] = Path("out"),
    summary: Annotated[
        Path, typer.Option(help="One JSON line per input line: job id, final key, status.")
    ] = Path("summary.jsonl"),
) -> None:
    """Submit every bundle of a JSONL file, follow them all, download the finals.

    Safe to run again after a crash: each line's job is keyed by the file's
    content hash and the line number, so no job is submitted twice."""
    from stageflow.cli.batch import BatchFileError, parse_bundles, run_batch
    from stageflow.v1 import orchestrator_pb2 as pb

    try:
        lines = parse_bundles(bundles.read_bytes())
    except (BatchFileError, UnicodeDecodeError) as err:
        _fail(f"error: {bundles}: {err}", EXIT_USAGE)
    except OSError as err:
        _fail(f"error: {err}", EXIT_USAGE)
    lane = pb.PRIORITY_BULK if priority is PriorityChoice.bulk else pb.PRIORITY_INTERACTIVE
    ui = _ui()
    _with_client(
        address,
        lambda c: run_batch(
            c,
            lines,
            concurrency=concurrency,
            priority=lane,
            out_dir=out,
            summary_path=summary,
            ui=ui,
        ),
        command="batch",
    )
