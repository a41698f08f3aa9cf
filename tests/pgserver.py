"""A real PostgreSQL server on loopback for tests: Debian's `postgresql` binaries.

`initdb` into a temporary folder, then `postgres` on a free loopback port
with its unix socket in that folder, run as a
`stageflow.serving.processes.ServerProcess` (ready once a query answers).
PostgreSQL refuses to run as root: under euid 0 the folder is owned by the
`postgres` user and both programs run as it (`setpriv`, which execs rather
than forks, so signals reach the server itself).

The superuser `stageflow` logs in with a password over TCP (scram-sha-256,
as a real deployment does) and without one over the unix socket (trust:
the fixtures' own administration). Durability settings are off: a test
database need not survive a power cut, and fsync costs seconds per test.

    with PostgresServer(tmp) as pg:
        url = pg.create_database("t1")   # postgresql://stageflow:PW@127.0.0.1:PORT/t1
        pg.restart()                     # same port, same data: a database outage
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from stageflow.serving.processes import ServerProcess

SUPERUSER = "stageflow"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_OS_USER = "postgres"  # who runs the server when the tests run as root


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    found = []
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bin_dir / "initdb").exists() and (bin_dir / "postgres").exists():
            try:
                found.append((int(bin_dir.parent.name), bin_dir))
            except ValueError:
                continue
    return max(found)[1] if found else None


def free_port() -> int:
    """A loopback port below the ephemeral range (so no outgoing connection takes it)."""
    rng = random.SystemRandom()
    for _ in range(2000):
        candidate = rng.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port on 127.0.0.1")


class PostgresServer:
    """One PostgreSQL cluster under a fresh temporary folder, on one port for
    its whole life: `stop()` and `start()` again keep the address and the data."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError(
                "no /usr/lib/postgresql/*/bin/postgres (apt install postgresql)"
            )
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        # Not under pytest's tmp folders: those are 0700 root, which the
        # postgres user cannot enter. /tmp is short, too (the socket path is bounded).
        self.root = Path(tempfile.mkdtemp(prefix="stageflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        if self.as_root:
            entry = pwd.getpwnam(_OS_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._server: ServerProcess | None = None
        self._starts = 0
        self._initdb()

    # -- addresses -------------------------------------------------------------

    def url(self, database: str, *, password: bool = True) -> str:
        """postgresql://stageflow[:PW]@127.0.0.1:PORT/database (TCP, password auth)."""
        secret = f":{self.password}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def admin_conninfo(self, database: str = "postgres") -> str:
        """The unix socket, no password (trust): for the fixtures' own setup."""
        return f"host={self.root} port={self.port} user={SUPERUSER} dbname={database}"

    # -- lifecycle -------------------------------------------------------------

    def _argv(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / program), *args]
        if self.as_root:
            argv = ["setpriv", f"--reuid={_OS_USER}", f"--regid={_OS_USER}", "--init-groups", *argv]
        return argv

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            entry = pwd.getpwnam(_OS_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        argv = self._argv(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.root)
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start the server and return once it answers a query (a restart appends to the log)."""
        argv = self._argv(
            "postgres",
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        )
        self._server = ServerProcess(
            "postgres",
            argv,
            log=self.log,
            cwd=self.root,
            ready=self._answers,
            append_log=self._starts > 0,
            start_timeout=STARTUP_TIMEOUT_S,
        )
        self._starts += 1
        self._server.start().wait_ready()

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients are disconnected, as in a real restart)."""
        server, self._server = self._server, None
        if server is None:
            return
        if server.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while server.returncode is None and time.monotonic() < deadline:
                time.sleep(0.05)
        server.stop(STOP_TIMEOUT_S)  # reaps it (SIGKILL only if SIGINT did not end it)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.returncode is None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- databases -------------------------------------------------------------

    def _answers(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_conninfo(), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def create_database(self, name: str) -> str:
        """A new empty database (a copy of template0, which takes milliseconds); its URL."""
        import psycopg

        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":  # manual use: python tests/pgserver.py
    with PostgresServer() as pg:
        print(f"url {pg.create_database('stageflow')}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    sys.exit(0)
