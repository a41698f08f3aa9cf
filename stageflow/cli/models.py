"""`stageflow models ...`: the model repository and live model swaps.

The repository root defaults to $STAGEFLOW_MODEL_REPOSITORY, else
models/repository; an S3 root (s3://bucket/prefix?endpoint=http://h:p) takes
its keys from STAGEFLOW_S3_ACCESS_KEY / STAGEFLOW_S3_SECRET_KEY.
Heavy modules (grpc, torch) are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from stageflow.inference.repository import ModelRepository, ModelVersion

models_app = typer.Typer(help="Models: fixtures, the model repository, live swaps.")

EXIT_USAGE = 2
EXIT_FAILURE = 1
USAGE_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})

Repository = Annotated[
    str | None,
    typer.Option(
        "--repository",
        help="Repository root: a folder or s3://bucket/prefix?endpoint=http://h:p "
        "(default: $STAGEFLOW_MODEL_REPOSITORY or models/repository).",
        show_default=False,
    ),
]


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(Text(message), soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Expected failures: one line on stderr and an exit code, no traceback."""
    from stageflow.core.errors import StageflowError

    try:
        yield
    except StageflowError as err:
        _fail(f"{err.code}: {err.message}", EXIT_USAGE if err.code in USAGE_CODES else EXIT_FAILURE)
    except ValueError as err:
        _fail(f"error: {err}", EXIT_USAGE)
    except OSError as err:
        _fail(f"error: {err}", EXIT_FAILURE)


def _open(root: str | None) -> ModelRepository:
    from stageflow.cli.settings import ModelCommandSettings, from_environment
    from stageflow.inference.repository import ModelRepository
    from stageflow.stage import codec

    codec.install()  # model.yaml may name a kind a plugin declares
    settings = from_environment(ModelCommandSettings)
    return ModelRepository(
        root or settings.model_repository,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        region=settings.s3_region,
        cache_dir=settings.model_cache,
    )


def _row(version: ModelVersion) -> dict[str, object]:
    return {
        "name": version.name,
        "version": version.version,
        "kinds": [str(k) for k in version.kinds],
        "format": str(version.format),
        "backend": str(version.backend),
        "architecture": version.architecture,
        "fingerprint": version.fingerprint,
        "source": version.source,
        "created_at": version.created_at.isoformat(),
    }


@models_app.command("build-fixtures")
def build_fixtures(
    out: Annotated[Path, typer.Option(help="Where to write the models.")] = Path("models"),
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
) -> None:
    """Build the tiny seeded fixture models locally (nothing is downloaded)."""
    from stageflow.inference.fixtures import build_fixtures as build

    paths = build(out, seed=seed)
    for name, path in paths.items():
        Console().print(Text(f"{name}: {path}"))


_started = time.monotonic()


def _step(message: str) -> None:
    """One line on stderr as each step of a long command starts, with the time so far."""
    Console(stderr=True).print(Text(f"[{time.monotonic() - _started:5.1f} s] {message} ..."))


@models_app.command("list")
def list_models(
    repository: Repository = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every model version in the repository."""
    with _errors():
        repo = _open(repository)
        versions, problems = repo.scan()
    if not versions and not problems and not as_json:
        Console().print(
            Text(
                f"no models in {repo.describe()}: import a model folder with "
                "`stageflow models import DIR --name NAME --version 1`, or pass --repository"
            ),
            soft_wrap=True,
        )
        return
    for problem in problems:
        Console(stderr=True).print(Text(f"skipped: {problem}"), soft_wrap=True)
    if as_json:
        print(json.dumps([_row(v) for v in versions], indent=2))
        return
    table = Table(title=f"models in {repo.describe()}")
    for column in ("model", "kinds", "format", "backend", "fingerprint", "source", "created"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.ref,
            ", ".join(str(k) for k in v.kinds),
            str(v.format) + (f" ({v.architecture})" if v.architecture else ""),
            str(v.backend),
            v.fingerprint[:12],
            v.source or "",
            v.created_at.isoformat(),
        )
    Console().print(table)


@models_app.command("import")
def import_model(
    src: Annotated[Path, typer.Argument(help="A local diffusers or ESRGAN folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    version: Annotated[str, typer.Option(help="Version to create, e.g. 1.")],
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Also store the weights cast to bf16 or fp16 (repeatable; diffusers "
            "folders): a stage serving that dtype maps them instead of casting at start."
        ),
    ] = None,
    repository: Repository = None,
) -> None:
    """Copy a local model folder into the repository as NAME@VERSION."""
    with _errors():
        created = _open(repository).import_folder(
            src, name, version, step=_step, variants=variant or ()
        )
    kinds = ", ".join(str(k) for k in created.kinds)
    Console().print(
        Text(f"imported {created.ref}: {created.format} ({created.architecture}) for {kinds}")
    )


@models_app.command("import-ncnn")
def import_ncnn(
    param: Annotated[Path, typer.Argument(help="The ncnn .param file.")],
    weights: Annotated[Path, typer.Argument(help="Its .bin file.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    version: Annotated[str, typer.Option(help="Version to create, e.g. 1.")],
    origin: Annotated[str, typer.Option(help="Where the files came from (recorded).")] = "",
    licence: Annotated[str, typer.Option(help="The weights' licence (recorded).")] = "",
    repository: Repository = None,
) -> None:
    """Convert an ncnn upscaler (Real-ESRGAN's RRDBNet or SRVGGNetCompact) to
    safetensors with Real-ESRGAN's parameter names and import it as NAME@VERSION."""
    import tempfile

    from stageflow.inference.ncnn import NcnnFormatError
    from stageflow.inference.sr_archs import convert_ncnn

    with _errors():
        repo = _open(repository)
        # Before the conversion: an existing version fails in a second, not after it.
        repo.check_new(name, version)
        with tempfile.TemporaryDirectory(prefix="stageflow-ncnn-") as scratch:
            _step(f"reading {param.name} and {weights.name}")
            try:
                arch, config = convert_ncnn(
                    param, weights, Path(scratch), origin=origin, licence=licence
                )
            except NcnnFormatError as err:
                _fail(f"error: {err}", EXIT_USAGE)
            _step(f"{arch.name} (x{config.scale}) converted")
            created = repo.import_folder(Path(scratch), name, version, step=_step)
    Console().print(Text(f"imported {created.ref}: {created.architecture} from {param.name}"))


@models_app.command("variant")
def add_variant(
    folder: Annotated[Path, typer.Argument(help="A local diffusers folder (SD or SDXL).")],
    dtype: Annotated[str, typer.Option(help="bf16 or fp16.")] = "bf16",
) -> None:
    """Store the folder's weights cast to DTYPE beside its own (diffusers' variant
    files, <name>.<dtype>.safetensors): a stage serving that dtype then maps them
    as they are instead of casting at every start. Run it before `models import`
    (or import with `--variant`, which leaves the source folder as it is)."""
    from stageflow.inference.variants import write_variant

    with _errors():
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{folder}: not a diffusers folder (no model_index.json)")
        written = write_variant(folder, dtype)
    size = sum(p.stat().st_size for p in written) / 2**20
    Console().print(Text(f"wrote {len(written)} {dtype} weight files ({size:.0f} MiB) in {folder}"))


@models_app.command("compile")
def compile_model(
    model: Annotated[str, typer.Argument(help="name[@version]; default its latest torch version.")],
    backend: Annotated[str, typer.Option(help="onnx or tensorrt.")] = "onnx",
    fp16: Annotated[bool, typer.Option("--fp16", help="Export in half precision.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(help="fp32 or fp16 (same as --fp16); bf16 is refused (no ONNX kernels)."),
    ] = None,
    repository: Repository = None,
) -> None:
    """Export a version to ONNX as a new version named <version>-<backend>[-<dtype>]."""
    from stageflow.inference.repository import parse_ref

    with _errors():
        name, version = parse_ref(model)
        created = _open(repository).compile(
            name, version, backend=backend, fp16=fp16, dtype=dtype, step=_step
        )
    summary = f"{created.backend}, {created.fingerprint[:12]}"
    Console().print(Text(f"compiled {created.source} -> {created.ref} ({summary})"))


@models_app.command("load")
def load_model(
    address: Annotated[str, typer.Argument(help="The stage's host:port.")],
    model: Annotated[str, typer.Argument(help="name@version from the stage's repository.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the load.")] = 600.0,
) -> None:
    """Make a running stage load and serve another model version, without a restart."""
    import grpc

    from stageflow.v1 import stage_pb2, stage_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = stage_pb2_grpc.StageAdminServiceStub(channel)
        try:
            reply = stub.LoadModel(stage_pb2.LoadModelRequest(model=model), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else "UNKNOWN"
            details = err.details() if hasattr(err, "details") else str(err)
            if code == "UNAVAILABLE":
                details = f"{details} (is a stage running at {address}?)"
            _fail(f"{code}: {details}", EXIT_USAGE if code in USAGE_CODES else EXIT_FAILURE)
    info = reply.model
    Console().print(
        Text(
            f"{address} now serves {info.name}@{info.version} "
            f"({info.backend}, {info.fingerprint[:12]})"
        )
    )
