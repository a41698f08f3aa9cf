"""The dev overlay, run as processes: the fixture-models Job's script, the three
stage Deployments and the orchestrator, each started with the command and the
environment the rendered manifests give its container, reach SERVING and run
one job end to end through S3.

What differs from a pod, and only that: MinIO's address is a SeaweedFS server on
loopback (with its keys in place of the Secret's), the job store's URL (Secret
stageflow-db-app, key uri) names a database on a PostgreSQL server on
loopback, every process listens on 127.0.0.1 on a free port (three stages
cannot share 50051 on one host), so the
orchestrator's `dns:///stage-*.stageflow.svc.cluster.local:50051` targets name
those ports, and each volume mount is a temporary folder (the pipeline
ConfigMap's files written into its own). Everything else (STAGEFLOW_MODEL, the
model repository, threads, queue and batching limits, the pipeline specs) is
the manifests' own, so a variable the manifests miss or misspell fails here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from stageflow import kinds
from stageflow.client import StageflowClient
from stageflow.orchestrator.settings import parse_stages
from stageflow.serving.processes import ServerProcess, wait_ready
from stageflow.v1 import orchestrator_pb2 as pb
from tests.deploy.render import Manifest
from tests.s3server import S3ServerInfo

MINIO = "http://minio:9000"
# The Deployment of each stage kind the manifests deploy (the default pipeline's).
STAGES = tuple(f"stage-{name}" for name in kinds.default_pipeline())


def workload(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


class Pod:
    """One container of a rendered workload, turned into a local process's
    argv, environment and folders."""

    def __init__(
        self,
        docs: list[Manifest],
        kind: str,
        name: str,
        s3: S3ServerInfo,
        tmp: Path,
        job_store_url: str = "",
    ) -> None:
        spec = workload(docs, kind, name)["spec"]["template"]["spec"]
        (self.container,) = spec["containers"]
        self.root = root = tmp / name
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "process.log"
        self.port_file = root / "port"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        self.mounts: dict[str, Path] = {}
        for mount in self.container.get("volumeMounts", []):
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.mounts[mount["mountPath"]] = local
            config_map = volumes[mount["name"]].get("configMap")
            if config_map is not None:
                data = workload(docs, "ConfigMap", config_map["name"])["data"]
                for file_name, text in data.items():
                    (local / file_name).write_text(text)
        secrets = {
            ("stageflow-s3", "access-key"): s3.access_key,
            ("stageflow-s3", "secret-key"): s3.secret_key,
            ("stageflow-db-app", "uri"): job_store_url,
        }
        self.env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) in secrets, ref
                self.env[var["name"]] = secrets[ref["name"], ref["key"]]
            else:
                self.env[var["name"]] = self.local(str(var["value"]).replace(MINIO, s3.endpoint))

    def local(self, value: str) -> str:
        """A value naming a path under a volume mount, pointed at its folder."""
        for mount_path, local in self.mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(local) + value[len(mount_path) :]
        return value

    def argv(self) -> list[str]:
        """The command, with `python` this venv's and mount paths local."""
        argv = []
        for part in [*self.container.get("command", []), *self.container.get("args", [])]:
            for mount_path, local in self.mounts.items():
                part = part.replace(f"{mount_path}/", f"{local}/")
            argv.append(sys.executable if part == "python" else part)
        return argv

    def environ(self, **overrides: str) -> dict[str, str]:
        # The image's PATH starts with its venv's bin (python, stageflow).
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, **self.env, **overrides}

    def start(self, stack: contextlib.ExitStack, **overrides: str) -> ServerProcess:
        """The server on a free loopback port, started; stopped when `stack` closes."""
        local = {
            "STAGEFLOW_HOST": "127.0.0.1",
            "STAGEFLOW_PORT": "0",
            "STAGEFLOW_PORT_FILE": str(self.port_file),
            "STAGEFLOW_METRICS_PORT": "0",
        }
        # cwd is not the checkout: a pod has no models/ or var/ to fall back on.
        env = self.environ(**local, **overrides)
        server = ServerProcess(
            self.root.name,
            self.argv(),
            log=self.log,
            port_file=self.port_file,
            env=env,
            cwd=self.root,
        )
        stack.callback(server.stop)
        return server.start()


def test_dev_overlay_runs_a_job(
    rendered: dict[str, list[Manifest]],
    s3_server: S3ServerInfo,
    pg_url: str,
    tmp_path: Path,
) -> None:
    docs = rendered["dev"]
    # The overlay's own PostgreSQL is a StatefulSet; here a server on loopback.
    (secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "stageflow-db-app"
    ]
    assert "@postgres:5432/" in base64.b64decode(secret["data"]["uri"]).decode()

    # The fixture-models Job: build the fixtures, import them into the repository.
    job = Pod(docs, "Job", "fixture-models", s3_server, tmp_path)
    done = subprocess.run(
        job.argv(),
        env=job.environ(),
        cwd=job.root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with contextlib.ExitStack() as stack:
        pods = {name: Pod(docs, "Deployment", name, s3_server, tmp_path) for name in STAGES}
        started = {name: pod.start(stack) for name, pod in pods.items()}
        wait_ready(list(started.values()), timeout=90)
        ports = {name: stage.port for name, stage in started.items()}

        orchestrator = Pod(docs, "Deployment", "orchestrator", s3_server, tmp_path, pg_url)
        assert orchestrator.env["STAGEFLOW_JOB_STORE_URL"] == pg_url
        # STAGEFLOW_STAGES names each stage's Service; point each at its local port.
        services = parse_stages(orchestrator.env["STAGEFLOW_STAGES"])
        assert set(services) == set(kinds.default_pipeline()), orchestrator.env
        local = {
            name: f"dns:///127.0.0.1:{ports[addresses[0].removeprefix('dns:///').split('.')[0]]}"
            for name, addresses in services.items()
        }
        stages = ";".join(f"{name}={address}" for name, address in local.items())
        started_orchestrator = orchestrator.start(stack, STAGEFLOW_STAGES=stages)
        address = started_orchestrator.wait_ready(timeout=90).address

        job_state = asyncio.run(submit_and_wait(address))
    assert job_state.state == pb.JOB_STATE_SUCCEEDED, job_state.error
    assert [run.stage for run in job_state.stages] == ["base", "refine", "upscale"]
    # Each stage served the model its Deployment names (STAGEFLOW_MODEL).
    assert {run.model.name for run in job_state.stages} == {"tiny-sd", "tiny-esrgan-x4"}
    # The final image is where the manifests' store URL says: the `stageflow` bucket.
    final = s3_server.store("stageflow").get(job_state.final.key)
    assert final.startswith(b"\x89PNG")


async def submit_and_wait(address: str) -> Any:
    async with StageflowClient(address) as client:
        job = await client.submit(base="a red circle", style="flat", width=64, height=64)
        _ = [event async for event in client.watch(job.job_id)]
        return await client.get(job.job_id)
