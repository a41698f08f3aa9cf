"""Orchestrator replicas as real processes over one job store, calling the
stage processes of a `LocalCluster`: the chaos tests and bench/orchestrators.py
start them here.

    group = Replicas(cluster, "postgresql://...", tmp, lease_seconds=2)
    a, b, c = group.start(3)             # each SERVING before start returns
    group.count("job.claimed")           # job id -> the replicas that logged it
    group.stop()

Each replica is a `stageflow.serving.processes.ServerProcess` logging JSON to
`<folder>/<name>.log`, with the stage cache off (every job really calls its
stages: coordination is what is measured) and the given lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from stageflow.cli.cluster import LocalCluster
from stageflow.serving.processes import ServerProcess, stop_all


class Replicas:
    def __init__(
        self,
        cluster: LocalCluster,
        url: str,
        folder: Path,
        *,
        lease_seconds: float,
        prefix: str = "orch",
        args: Sequence[str] = (),
    ) -> None:
        """Replicas of job store `url`, named `<prefix><n>`, each with `args` added."""
        self.cluster = cluster
        self.url = url
        self.folder = folder
        self.lease_seconds = lease_seconds
        self.prefix = prefix
        self.args = list(args)
        self.procs: list[ServerProcess] = []

    def start(self, n: int, extra: Sequence[str] = ()) -> list[ServerProcess]:
        """Start `n` more replicas; return them once every one is SERVING."""
        for _ in range(n):
            name = f"{self.prefix}{len(self.procs)}"
            port_file = self.folder / f"{name}.port"
            argv = orchestrator_argv(
                self.cluster,
                port_file,
                self.url,
                ["--lease-seconds", str(self.lease_seconds), "--stage-cache", "false",
                 "--replica-name", name, *self.args, *extra],
            )  # fmt: skip
            proc = ServerProcess(name, argv, log=self.folder / f"{name}.log", port_file=port_file)
            self.procs.append(proc.start())
        for proc in self.procs[-n:]:
            proc.wait_ready(60)
        return self.procs[-n:]

    def events(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines replica `name` has written so far."""
        out = []
        path = self.folder / f"{name}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def count(self, event: str) -> dict[str, list[str]]:
        """job id -> the replicas that logged `event` for it."""
        seen: dict[str, list[str]] = {}
        for proc in self.procs:
            for e in self.events(proc.name):
                if e.get("event") == event:
                    seen.setdefault(str(e["job_id"]), []).append(proc.name)
        return seen

    def stop(self, grace: float = 15) -> None:
        """Stop every replica (one paused by a test is resumed first)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        stop_all(self.procs, grace)


def orchestrator_argv(
    cluster: LocalCluster, port_file: Path, job_store_url: str, extra: Sequence[str] = ()
) -> list[str]:
    """An orchestrator on a free port over `cluster`'s stages and object store."""
    stages = ";".join(f"{s}={cluster.addresses[s]}" for s in cluster.stages)
    return [
        sys.executable, "-m", "stageflow.orchestrator",
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
        "--store-url", cluster.store_url, "--log-json", "true",
        "--stages", stages, "--job-store-url", job_store_url, *extra,
    ]  # fmt: skip


def address(proc: ServerProcess) -> str:
    return f"127.0.0.1:{proc.port}"
