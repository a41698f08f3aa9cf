"""The whole system as real processes on loopback: the stages, the orchestrator, the gateway.

`LocalCluster` is what `stageflow up`, `stageflow demo` and the integration tests
run. Every process is started with `--port 0` and reports the port it bound
through a port file, so several clusters can run side by side; readiness is the
grpc.health.v1 answer SERVING, polled, never guessed with a sleep.

The processes are `stageflow.serving.processes.ServerProcess`es: each in its
own session (Ctrl-C reaches only the launcher, which then stops them in order,
orchestrator first), and each dies with the launcher however it ends (SIGKILL
included, through a parent-death signal). A launcher that should turn SIGTERM
and SIGHUP into an orderly stop runs inside `processes.signals_interrupt()`
(`stageflow up` does). start() blocks; from async code call it through
asyncio.to_thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from stageflow import kinds
from stageflow.serving import processes
from stageflow.serving.processes import ProcessError, ServerProcess

# The stages a cluster runs unless told otherwise: the default pipeline's kinds.
STAGES: tuple[str, ...] = kinds.default_pipeline()
ORCHESTRATOR = "orchestrator"
GATEWAY = "gateway"
# The committed trained fixtures of a checkout (not shipped in the wheel): the
# default, which draw what the prompt says ("a red circle on a blue
# background", 32 px); a models_dir is laid out like `stageflow models
# build-fixtures` output (random weights). Each kind declares its folder in both.
TRAINED_MODELS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "trained"


def stage_models(trained: bool, names: Sequence[str] | None = None) -> dict[str, str]:
    """Stage -> the fixture folder it serves (trained fixtures or build-fixtures')."""
    found = [kinds.get(n) for n in names] if names is not None else kinds.all_kinds()
    return {
        k.name: (k.trained_folder or k.model_folder) if trained else k.model_folder for k in found
    }


STAGE_MODELS: Mapping[str, str] = stage_models(trained=False, names=STAGES)
TRAINED_STAGE_MODELS: Mapping[str, str] = stage_models(trained=True, names=STAGES)


class ClusterError(RuntimeError):
    """A process of the cluster could not be started or did not become ready."""


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` in args, the last one winning."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


class LocalCluster:
    """Starts the stages (base, refine, upscale unless `stages` names other
    registered kinds), the orchestrator and, given a `gateway_port`, the HTTP
    gateway as child processes.

    Use as a context manager (starts on enter, stops on exit) or call
    `start()` / `stop()`. Logs go to `<state_dir>/logs/<name>.log`.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        models_dir: Path | None = None,
        store_url: str | None = None,
        s3_access_key: str = "",
        s3_secret_key: str = "",
        orchestrator_port: int = 0,
        torch_threads: int = 1,
        extra_env: Mapping[str, str] | None = None,
        stage_args: Mapping[str, Sequence[str]] | None = None,
        orchestrator_args: Sequence[str] = (),
        gateway_port: int | None = None,
        gateway_args: Sequence[str] = (),
        stages: Sequence[str] = STAGES,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.stages = tuple(stages)
        # No models_dir: the trained fixtures; a models_dir: build-fixtures' layout.
        self.models_dir = Path(models_dir).resolve() if models_dir else TRAINED_MODELS_DIR
        self.trained = not models_dir
        self.stage_models = stage_models(self.trained, self.stages)
        self.store_url = store_url or (self.state_dir / "store").as_uri()
        self.orchestrator_port = orchestrator_port
        self.torch_threads = torch_threads
        self._s3_keys = (s3_access_key, s3_secret_key)
        self._extra_env = dict(extra_env or {})
        self._stage_args = {name: list(args) for name, args in (stage_args or {}).items()}
        unknown = set(self._stage_args) - set(self.stages)
        if unknown:
            raise ValueError(
                f"stage_args names unknown stages {sorted(unknown)}; known: {self.stages}"
            )
        self._orchestrator_args = list(orchestrator_args)  # extra flags, e.g. --stage-cache false
        # The HTTP gateway in front of the orchestrator: None runs none, 0 any free port.
        self.gateway_port = gateway_port
        self._gateway_args = list(gateway_args)
        self._procs: dict[str, ServerProcess] = {}
        # (certificate, key, CA) every process serves and calls with: mutual TLS on every hop.
        self.tls = tuple(Path(p).resolve() for p in tls) if tls else None

    # -- what callers read ---------------------------------------------------

    @property
    def addresses(self) -> dict[str, str]:
        """name -> "127.0.0.1:port" of every process that is ready."""
        return {n: f"127.0.0.1:{p.port}" for n, p in self._procs.items() if p.ready}

    @property
    def orchestrator_address(self) -> str:
        try:
            return self.addresses[ORCHESTRATOR]
        except KeyError:
            raise ClusterError("the orchestrator is not running; call start() first") from None

    @property
    def gateway_url(self) -> str:
        """http(s)://127.0.0.1:port of the gateway (started with gateway_port set)."""
        try:
            scheme = "https" if self.tls else "http"
            return f"{scheme}://{self.addresses[GATEWAY]}"
        except KeyError:
            raise ClusterError("no gateway is running (start with gateway_port set)") from None

    def metrics_url(self, name: str) -> str:
        """http://127.0.0.1:port/metrics of a process (its port file's
        `.metrics` sibling, written once the endpoint listens), or "" when it
        serves none (the gateway, or metrics turned off)."""
        try:
            port = int(self.port_file(name).with_name(f"{name}.metrics").read_text())
        except (OSError, ValueError):
            return ""
        return f"http://127.0.0.1:{port}/metrics"

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self._proc(name).popen

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def port_file(self, name: str) -> Path:
        return self.state_dir / "ports" / name

    def model_path(self, stage: str) -> Path:
        """The model folder a stage serves: its --model-path in stage_args, else the fixture."""
        override = _flag_value(self._stage_args.get(stage, []), "--model-path")
        return Path(override) if override else self.models_dir / self.stage_models[stage]

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        """Start the stages in parallel, then the orchestrator; return once all are SERVING.

        Raises ClusterError (after stopping whatever was started) when a model
        folder is missing, a process exits, or readiness takes over `timeout`.
        """
        if self._procs:
            raise ClusterError("cluster already started")
        self._check_models()
        for sub in ("logs", "ports"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            for stage in self.stages:
                self._spawn(stage, self._stage_argv(stage, port=0))
            self._wait_ready(self.stages, deadline, timeout)
            self._spawn(ORCHESTRATOR, self._orchestrator_argv(self.orchestrator_port))
            self._wait_ready((ORCHESTRATOR,), deadline, timeout)
            if self.gateway_port is not None:
                self._spawn(GATEWAY, self._gateway_argv(self.gateway_port))
                self._wait_ready((GATEWAY,), deadline, timeout)
        except BaseException:
            self.stop(grace=5)
            raise

    def stop(self, grace: float = 15) -> None:
        """SIGTERM the gateway, the orchestrator, then the stages; SIGKILL what outlives `grace`.

        Safe to call twice, and on a cluster that never started. A signal that
        arrives meanwhile hurries the stop instead of cutting it short.
        """
        with processes.stopping():
            if GATEWAY in self._procs:
                processes.stop_all([self._procs[GATEWAY]], grace)
            if ORCHESTRATOR in self._procs:
                processes.stop_all([self._procs[ORCHESTRATOR]], grace)
            processes.stop_all([self._procs[n] for n in self.stages if n in self._procs], grace)
            self._procs.clear()

    def restart(self, name: str, timeout: float = 120, grace: float = 15) -> None:
        """Stop one process and start it again on the same port (the others keep its address)."""
        old = self._proc(name)
        old.stop(grace)
        argv = old.argv
        if old.port is not None:
            argv = self._with_port(argv, old.port)
        del self._procs[name]
        self._spawn(name, argv, append_log=True)
        self._wait_ready((name,), time.monotonic() + timeout, timeout)

    def __enter__(self) -> Self:
        if not self._procs:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------

    def _proc(self, name: str) -> ServerProcess:
        try:
            return self._procs[name]
        except KeyError:
            raise KeyError(
                f"no running process named {name!r}; have {sorted(self._procs)}"
            ) from None

    def _check_models(self) -> None:
        missing = [
            f"{stage}: {path}"
            for stage in self.stages
            if not (path := self.model_path(stage)).is_dir() or not any(path.iterdir())
        ]
        if not missing:
            return
        if self.trained:
            hint = "Restore the committed trained fixtures or retrain them: `make fixtures-train`."
        else:
            build = f"stageflow models build-fixtures --out {self.models_dir}"
            hint = f"Build the fixture models with `make setup` or `{build}`."
        raise ClusterError("model folders are missing (" + "; ".join(missing) + "). " + hint)

    def _common_argv(self, name: str, port: int) -> list[str]:
        return [
            "--host", "127.0.0.1",
            "--port", str(port),
            "--port-file", str(self.port_file(name)),
            "--store-url", self.store_url,
            "--log-json", "true",
            *self._tls_argv(),
        ]  # fmt: skip

    def _tls_argv(self) -> list[str]:
        if self.tls is None:
            return []
        cert, key, ca = self.tls
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]

    def _stage_argv(self, stage: str, port: int) -> list[str]:
        argv = [*self._launcher("stageflow.stage", stage), *self._common_argv(stage, port)]
        argv += ["--torch-threads", str(self.torch_threads)]
        extra = self._stage_args.get(stage, [])
        if _flag_value(extra, "--model-path") is None:
            argv += ["--model-path", str(self.model_path(stage))]
        return argv + extra

    def _orchestrator_argv(self, port: int) -> list[str]:
        argv = [*self._launcher("stageflow.orchestrator"), *self._common_argv(ORCHESTRATOR, port)]
        argv += ["--db-path", str(self.state_dir / "orchestrator.sqlite")]
        argv += ["--stages", ";".join(f"{s}={self.addresses[s]}" for s in self.stages)]
        return argv + self._orchestrator_args

    def _gateway_argv(self, port: int) -> list[str]:
        return [
            *self._launcher("stageflow.gateway"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--port-file", str(self.port_file(GATEWAY)),
            "--orchestrator-address", self.orchestrator_address,
            "--log-json", "true",
            *self._tls_argv(),
            *self._gateway_args,
        ]  # fmt: skip

    @staticmethod
    def _launcher(module: str, *args: str) -> list[str]:
        """The command that runs a module (tests swap in a fake service here)."""
        return [sys.executable, "-m", module, *args]

    @staticmethod
    def _with_port(argv: list[str], port: int) -> list[str]:
        out = list(argv)
        out[out.index("--port") + 1] = str(port)
        return out

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self._extra_env, "PYTHONUNBUFFERED": "1"}
        access, secret = self._s3_keys
        # Secrets go by environment, never argv: argv is visible to every user in `ps`.
        if access:
            env["STAGEFLOW_S3_ACCESS_KEY"] = access
        if secret:
            env["STAGEFLOW_S3_SECRET_KEY"] = secret
        return env

    def _spawn(self, name: str, argv: list[str], append_log: bool = False) -> None:
        proc = ServerProcess(
            name,
            argv,
            log=self.log_path(name),
            port_file=self.port_file(name),
            ready=(lambda: _http_ready(proc, self.tls)) if name == GATEWAY else None,
            credentials=self._credentials(),
            env=self._env(),
            append_log=append_log,
        )
        self._procs[name] = proc.start()

    def _credentials(self) -> Any:
        if self.tls is None:
            return None
        import grpc

        cert, key, ca = self.tls
        return grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())

    def _wait_ready(self, names: Sequence[str], deadline: float, timeout: float) -> None:
        try:
            processes.wait_ready(
                [self._procs[n] for n in names], max(0.0, deadline - time.monotonic())
            )
        except ProcessError as e:
            raise ClusterError(str(e)) from e


def _http_ready(proc: ServerProcess, tls: tuple[Path, ...] | None = None) -> bool:
    """The gateway's /readyz answers 200 (it is HTTP: no grpc.health); HTTPS
    verified against the CA with `tls`."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(tls[2])) if tls else None
    scheme = "https" if tls else "http"
    try:
        with urllib.request.urlopen(
            f"{scheme}://{proc.address}/readyz", timeout=1, context=context
        ) as reply:
            return bool(reply.status == 200)
    except urllib.error.URLError:
        return False
