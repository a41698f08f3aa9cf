"""Real processes on loopback: the three stages and the orchestrator, started
once per session over the local store and once over a real S3 server.

`job_store_url` gives a module one job database per store, SQLite and
PostgreSQL (a test using it runs once for each); `orchestrator` is an
orchestrator process of the module's own on it, calling the session
cluster's stages: the tests where the job store matters (submit, run,
cancel, rerun, the stage cache) take its address.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import LocalStore, ObjectStore
from stageflow.inference.fixtures import build_fixtures
from stageflow.serving.metrics import metrics_port_file
from stageflow.serving.processes import ServerProcess
from tests.replicas import orchestrator_argv
from tests.s3server import S3ServerInfo

S3_BUCKET = "itest"
JOB_STORES = ("sqlite", "postgres")
_module_databases = itertools.count(1)


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random-weight fixtures, built fresh (never downloaded)."""
    out = tmp_path_factory.mktemp("models")
    build_fixtures(out, seed=0)
    return out


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("local-cluster")
    with LocalCluster(state_dir=state, models_dir=fixture_models, torch_threads=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def local_store(local_cluster: LocalCluster) -> ObjectStore:
    """The same folder the local cluster's processes read and write."""
    return LocalStore(local_cluster.state_dir / "store")


@pytest.fixture(scope="session")
def s3_cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path, s3_server: S3ServerInfo
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("s3-cluster")
    with LocalCluster(
        state_dir=state,
        models_dir=fixture_models,
        store_url=f"s3://{S3_BUCKET}?endpoint={s3_server.endpoint}",
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        torch_threads=1,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=JOB_STORES)
def job_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new job database for this module: a SQLite file, or a database of
    its own on the session's PostgreSQL server (dropped after the module)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'jobs.sqlite'}"
        return
    server = request.getfixturevalue("pg_server")  # skips where PostgreSQL is not installed
    name = f"module_{next(_module_databases)}"
    url = server.create_database(name)
    yield url
    if not server.running:
        server.start()
    server.drop_database(name)


@pytest.fixture(scope="module")
def orchestrator(
    local_cluster: LocalCluster, job_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The address of the module's orchestrator on `job_store_url`."""
    folder = tmp_path_factory.mktemp("orchestrator")
    port_file = folder / "orchestrator.port"
    argv = orchestrator_argv(local_cluster, port_file, job_store_url)
    proc = ServerProcess("orchestrator", argv, log=folder / "orchestrator.log", port_file=port_file)
    proc.start()
    try:
        proc.wait_ready(60)
        yield proc.address
    finally:
        proc.stop()


def log_events(cluster: LocalCluster, name: str) -> list[dict[str, object]]:
    """The JSON log lines a process has written so far."""
    events = []
    for line in cluster.log_path(name).read_text().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_metrics(port_file: Path) -> Samples:
    """Every sample of the /metrics endpoint of the process that wrote `port_file`."""
    metrics_file = metrics_port_file(port_file, None)
    assert metrics_file is not None
    port = int(metrics_file.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
