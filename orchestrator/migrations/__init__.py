"""Versioned schema migrations of the job database, one ordered list per backend.

`sqlite/NNNN_name.sql` and `postgres/NNNN_name.sql` are applied in number
order, each exactly once, at start-up, inside one transaction (so a crash
half-way leaves the previous version whole). `schema_version` records one row
per applied file; the database's version is the largest. Numbers start at 1
and have no gaps, so two branches adding the same number fail loudly here
rather than skipping one. A database at a version newer than the last file
this code ships was migrated by a newer release: it is refused
(`SchemaTooNew`), never written to, since this code cannot know what the
newer columns mean.

The stores run the files (`sqlite_store`, `postgres_store`): this module
knows the list and the rules, not the drivers.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
BACKENDS = ("sqlite", "postgres")

# Created before any migration runs; its rows are the migrations applied.
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL  -- unix microseconds
)
"""


class SchemaTooNew(RuntimeError):
    """The database was migrated past what this code knows."""

    def __init__(self, backend: str, found: int, known: int) -> None:
        super().__init__(
            f"the {backend} job database is at schema version {found}, newer than the "
            f"latest this orchestrator knows ({known}): it was migrated by a newer release; "
            "run that release (or a newer one) against it"
        )
        self.found = found
        self.known = known


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations(backend: str) -> tuple[Migration, ...]:
    """The backend's migrations, in order; checked to be numbered 1, 2, 3..."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    found = []
    for path in sorted((_ROOT / backend).glob("*.sql")):
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise RuntimeError(f"migration file {path.name}: expected NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations must be numbered 1..N without gaps: {numbers}")
    return tuple(found)


def latest(backend: str) -> int:
    return len(migrations(backend))


def pending(backend: str, current: int) -> tuple[Migration, ...]:
    """What to apply to a database at `current`; raises SchemaTooNew past the last."""
    known = latest(backend)
    if current > known:
        raise SchemaTooNew(backend, current, known)
    return migrations(backend)[current:]


def sqlite_statements(sql: str) -> list[str]:
    """A script cut into statements (sqlite3 runs one per execute; executescript
    would commit the transaction the migration runs in)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()
    ):
        raise RuntimeError(f"unterminated SQL statement: {buffer.strip()[:80]!r}")
    return statements
