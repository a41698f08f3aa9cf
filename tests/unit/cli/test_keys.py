"""`stageflow keys create/list/revoke` against a real SQLite job database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stageflow.cli.main import app
from stageflow.orchestrator.auth import Authenticator
from stageflow.orchestrator.sqlite_store import SqliteJobStore

SECRET = "z" * 32


def _authenticate(db: Path, key: str) -> str:
    async def main() -> str:
        store = SqliteJobStore(db)
        try:
            principal = await Authenticator(store, SECRET, enabled=True).authenticate(key)
            assert principal is not None
            return principal.tenant
        finally:
            await store.close()

    return asyncio.run(main())


def _make_db(db: Path) -> None:
    """The database the orchestrator creates on its first start."""
    asyncio.run(SqliteJobStore(db).close())


def test_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "orchestrator.sqlite"
    _make_db(db)
    monkeypatch.setenv("STAGEFLOW_AUTH_SECRET_KEY", SECRET)
    runner = CliRunner()
    created = runner.invoke(
        app, ["keys", "create", "--tenant", "acme", "--db-path", str(db), "--json"]
    )
    assert created.exit_code == 0, created.output
    row = json.loads(created.output)
    key = row["key"]
    assert _authenticate(db, key) == "acme"  # the printed key is the stored one

    listed = runner.invoke(app, ["keys", "list", "--db-path", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.output)
    assert shown["key_id"] == row["key_id"] and shown["revoked_at"] == ""
    assert key not in listed.output and shown["prefix"] == key[:15]
    table = runner.invoke(app, ["keys", "list", "--db-path", str(db)])
    assert row["key_id"] in table.output and key not in table.output

    revoked = runner.invoke(app, ["keys", "revoke", row["key_id"], "--db-path", str(db)])
    assert revoked.exit_code == 0, revoked.output
    [shown] = json.loads(
        runner.invoke(app, ["keys", "list", "--db-path", str(db), "--json"]).output
    )
    assert shown["revoked_at"] != ""
    missing = runner.invoke(app, ["keys", "revoke", "000000000000", "--db-path", str(db)])
    assert missing.exit_code == 2 and "no key" in missing.output


def test_create_needs_the_server_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "orchestrator.sqlite"
    _make_db(db)
    monkeypatch.setenv("STAGEFLOW_AUTH_SECRET_KEY", "short")
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "acme", "--db-path", str(db)])
    assert result.exit_code == 2 and "STAGEFLOW_AUTH_SECRET_KEY" in result.output
    monkeypatch.setenv("STAGEFLOW_AUTH_SECRET_KEY", SECRET)
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "Not OK", "--db-path", str(db)])
    assert result.exit_code == 2 and "--tenant" in result.output
    result = CliRunner().invoke(app, ["keys", "list", "--db-path", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2 and "no job database" in result.output
