"""A gateway in front of an orchestrator with authentication on, and API keys
of two tenants: what tests/integration/test_gateway.py and the browser tests
run against (real processes, `LocalCluster`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stageflow.cli.cluster import LocalCluster

SECRET = "gateway-test-secret-0123456789abcdef"
SHARE_SECRET = "gateway-share-secret-0123456789abcdef"
TENANTS = ("acme", "globex")


@dataclass
class Gateway:
    cluster: LocalCluster
    url: str
    keys: dict[str, str]  # tenant -> key

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        db = self.cluster.state_dir / "orchestrator.sqlite"
        return subprocess.run(
            [sys.executable, "-m", "stageflow.cli", "keys", *args, "--db-path", str(db)],
            env={**os.environ, "STAGEFLOW_AUTH_SECRET_KEY": SECRET},
            capture_output=True,
            text=True,
            check=True,
        )


@contextmanager
def gateway_stack(
    state_dir: Path, models_dir: Path | None, extra_env: Mapping[str, str] | None = None
) -> Iterator[Gateway]:
    """Stages, an orchestrator with --auth true, a gateway on a free port, and one
    key per tenant of TENANTS. `models_dir` None: the trained fixtures."""
    with LocalCluster(
        state_dir=state_dir,
        models_dir=models_dir,
        torch_threads=1,
        orchestrator_args=["--auth", "true"],
        extra_env={
            "STAGEFLOW_AUTH_SECRET_KEY": SECRET,
            "STAGEFLOW_SHARE_SECRET_KEY": SHARE_SECRET,
            **(extra_env or {}),
        },
        gateway_port=0,
    ) as cluster:
        gw = Gateway(cluster, cluster.gateway_url, {})
        for tenant in TENANTS:
            out = gw.keys_cli("create", "--tenant", tenant, "--json").stdout
            gw.keys[tenant] = json.loads(out)["key"]
        yield gw
