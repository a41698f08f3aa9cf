"""`stageflow keys ...`: API keys of the orchestrator's tenants.

These commands open the orchestrator's job database directly (the URL of
--job-store-url / STAGEFLOW_JOB_STORE_URL, e.g. the PostgreSQL the replicas
share on Kubernetes; without one, the SQLite file of --db-path /
STAGEFLOW_DB_PATH), not an RPC: an admin RPC would need its own
credential before the first key exists, and would put key minting on the
network. Whoever may read the database and the server secret administers keys
(on Kubernetes: `kubectl exec` into the orchestrator pod). The secret comes
only from STAGEFLOW_AUTH_SECRET_KEY, never a flag (argv is visible in `ps`).
Revocation takes effect at the orchestrator's next call with that key.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from stageflow.orchestrator.auth import ApiKey
    from stageflow.orchestrator.store import JobStore

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.")

SECRET_ENV = "STAGEFLOW_AUTH_SECRET_KEY"
EXIT_USAGE = 2
T = TypeVar("T")

DbPath = Annotated[
    Path,
    typer.Option(
        "--db-path",
        envvar="STAGEFLOW_DB_PATH",
        help="The orchestrator's SQLite job database.",
    ),
]
StoreUrl = Annotated[
    str,
    typer.Option(
        "--job-store-url",
        envvar="STAGEFLOW_JOB_STORE_URL",
        help="The orchestrator's job database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(password in the URL or PGPASSWORD). Empty: the SQLite file --db-path.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"error: {message}", style="red", markup=False)
    raise typer.Exit(EXIT_USAGE)


def _with_store(db_path: Path, job_store_url: str, body: Callable[[JobStore], Awaitable[T]]) -> T:
    from stageflow.core.errors import StageflowError
    from stageflow.core.logging import configure_logging
    from stageflow.orchestrator.migrations import SchemaTooNew
    from stageflow.orchestrator.store import open_job_store, sqlite_path

    configure_logging(level="WARNING")  # to stderr: stdout is the output (--json)
    url = job_store_url.strip() or f"sqlite:///{db_path}"
    if url.startswith("sqlite:"):
        try:
            path = Path(sqlite_path(url))
        except ValueError as err:
            _fail(str(err))
        if not path.exists():
            _fail(f"no job database at {path} (set --job-store-url or --db-path)")

    async def main() -> T:
        try:
            store = await open_job_store(url)
        except ValueError as err:
            _fail(str(err))
        except SchemaTooNew as err:
            _fail(str(err))
        except StageflowError as err:  # the database cannot be reached
            _fail(err.message)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _time(us: int) -> str:
    if not us:
        return ""
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).isoformat(timespec="seconds")


def _row(key: ApiKey) -> dict[str, object]:
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "prefix": key.prefix,
        "created_at": _time(key.created_at),
        "revoked_at": _time(key.revoked_at),
        "priority": key.priority or "interactive",
    }


@keys_app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for, e.g. acme.")],
    quota: Annotated[
        str | None,
        typer.Option(
            help="Set the TENANT's limits (all its keys): 'running=N,queued=N,per_minute=N', "
            "any of them; the others then have none. Unset: keep its quota (or the default)."
        ),
    ] = None,
    priority: Annotated[
        str,
        typer.Option(help="interactive (the request's own lane) or bulk (all its jobs bulk)."),
    ] = "interactive",
    db_path: DbPath = Path("var/orchestrator.sqlite"),
    job_store_url: StoreUrl = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a key for TENANT and print it once (only its hash is stored)."""
    from stageflow.cli.settings import KeyCommandSettings, from_environment
    from stageflow.core.errors import InvalidArgument
    from stageflow.orchestrator.auth import check_secret, new_key
    from stageflow.orchestrator.quotas import parse_quota

    secret = from_environment(KeyCommandSettings).auth_secret_key.get_secret_value()
    try:
        check_secret(secret)
        key, record = new_key(tenant, secret, "" if priority == "interactive" else priority)
        limits = parse_quota(quota) if quota is not None else None
    except InvalidArgument as err:
        field = SECRET_ENV if err.field == "auth_secret_key" else f"--{err.field}"
        _fail(f"{field}: {err.message.removeprefix(err.field + ': ')}")

    async def store_key(store: JobStore) -> None:
        await store.create_key(record)
        if limits is not None:
            await store.set_quota(record.tenant, limits)

    _with_store(db_path, job_store_url, store_key)
    if as_json:
        print(json.dumps({"key": key, **_row(record)}))
        return
    out = Console()
    out.print(f"key {record.key_id} for tenant {record.tenant}:", markup=False)
    print(key)
    out.print("Store it now: it is not shown again.", style="yellow")


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    db_path: DbPath = Path("var/orchestrator.sqlite"),
    job_store_url: StoreUrl = "",
    as_json: JsonFlag = False,
) -> None:
    """List keys: id, tenant, prefix, created, revoked (never the key)."""
    keys = _with_store(db_path, job_store_url, lambda store: store.list_keys(tenant))
    if as_json:
        print(json.dumps([_row(k) for k in keys]))
        return
    table = Table(title="API keys")
    for column in ("key_id", "tenant", "prefix", "created_at", "revoked_at"):
        table.add_column(column)
    for key in keys:
        row = _row(key)
        table.add_row(
            *(str(row[c]) for c in ("key_id", "tenant", "prefix", "created_at")),
            str(row["revoked_at"]) or "-",
        )
    Console().print(table)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`).")],
    db_path: DbPath = Path("var/orchestrator.sqlite"),
    job_store_url: StoreUrl = "",
) -> None:
    """Revoke a key: its next call is UNAUTHENTICATED (401 through the gateway)."""
    import time

    key = _with_store(
        db_path, job_store_url, lambda store: store.revoke_key(key_id, time.time_ns() // 1000)
    )
    if key is None:
        _fail(f"no key with id {key_id!r}")
    Console().print(f"revoked key {key.key_id} of tenant {key.tenant}", markup=False)
