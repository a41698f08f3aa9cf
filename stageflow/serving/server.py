"""The one way a stageflow process serves gRPC.

`serve()` adds what every process needs around its own services: the error
interceptor, explicit message limits, grpc.health.v1, reflection (so grpcurl
can list and call everything), a port file for port-0 launches, and a graceful
drain on SIGTERM/SIGINT.

Health is NOT_SERVING from bind until `startup()` (e.g. model load) returns,
SERVING after (while the process's `health_check`, when it has one, passes:
the orchestrator's asks its job database), and NOT_SERVING again as soon as
shutdown begins.

SIGUSR1 flips health to NOT_SERVING for good while the process keeps serving
every call, new ones included: a Kubernetes preStop hook sends it so that
readiness fails and balancers (the orchestrator's round_robin over a headless
Service) stop picking this pod *before* SIGTERM starts the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from stageflow.core.logging import get_logger
from stageflow.serving.interceptors import ErrorInterceptor, TelemetryInterceptor
from stageflow.serving.metrics import MetricsServer, metrics_port_file, start_metrics_server
from stageflow.serving.settings import CommonSettings
from stageflow.serving.tls import server_credentials
from stageflow.serving.tracing import configure_tracing

log = get_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_UNADVERTISE = signal.SIGUSR1
# How often a `health_check` is asked, once serving.
HEALTH_INTERVAL_S = 1.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Service:
    """A service to serve: its full proto name (for health and reflection)
    and a function adding its servicer, e.g.
    ``lambda s: stage_pb2_grpc.add_StageServiceServicer_to_server(servicer, s)``."""

    name: str
    register: Callable[[grpc.aio.Server], None]


def write_port_file(path: Path, port: int) -> None:
    """Write atomically, so a launcher polling the file never reads half a number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def serve(
    services: list[Service],
    settings: CommonSettings,
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    drain: Callable[[float], Awaitable[None]] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    health_check: Callable[[], Awaitable[bool]] | None = None,
    health_interval_s: float = HEALTH_INTERVAL_S,
    name: str = "",
) -> None:
    """Serve until SIGTERM/SIGINT (or until this task is cancelled), then drain.

    `name` (base, refine, upscale, orchestrator) labels this process's metrics
    and spans. The Prometheus endpoint (settings.metrics_port) and the tracer
    (settings.tracing_*) live as long as the server.

    Raises when the address cannot be bound or `startup` fails. Once the
    server has started, `shutdown` always runs on the way out, after in-flight
    calls drained (so it must cope with a `startup` that did not finish).
    `drain(seconds)`, when given, runs first, health already NOT_SERVING and
    calls still served: the process stops taking on work and lets what runs
    end within `seconds` (the grace period); the server then stops with what
    is left of the grace.

    `health_check`, when given, is awaited every `health_interval_s` once
    startup is done: health is SERVING while it returns True and NOT_SERVING
    while it returns False or raises (a database the process needs is away),
    until shutdown begins.
    """
    process = name  # `name` is reused below for the services' names
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        # Telemetry outermost: it must see the status ErrorInterceptor settled on.
        interceptors=[TelemetryInterceptor(process), ErrorInterceptor(), *interceptors],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # grpc sets SO_REUSEPORT by default on Linux: a second server on
            # the same port would bind quietly and steal half the calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    health = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.register(server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    address = f"{host}:{settings.port}"
    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_ca)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:  # grpc raises on a port in use
        raise OSError(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = _install_signal_handlers(loop, stop)
    if _add_signal_handler(loop, _UNADVERTISE, lambda: asyncio.ensure_future(_unadvertise(health))):
        installed.append(_UNADVERTISE)
    phase = "startup"
    metrics_server: MetricsServer | None = None
    stop_tracing: Callable[[], None] = lambda: None  # noqa: E731
    try:
        stop_tracing = configure_tracing(
            settings.tracing_exporter,
            service=process,
            endpoint=settings.tracing_endpoint,
            file=settings.tracing_file,
        )
        # Before the gRPC port file: whoever waits on that may read this one next.
        metrics_server = _start_metrics(settings, host)
        if settings.port_file:
            write_port_file(settings.port_file, port)
        log.info("listening", address=f"{host}:{port}", services=names)
        if startup is not None and not await _until_stopped(startup(), stop):
            log.info("stop requested during startup")
            return
        for name in ["", *names]:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", address=f"{host}:{port}")
        phase = "serve"
        if health_check is None:
            await stop.wait()
        else:
            await _watch_health(health, ["", *names], health_check, health_interval_s, stop)
        log.info("draining", grace_seconds=settings.grace_seconds)
    except asyncio.CancelledError:
        log.info("cancelled; draining", grace_seconds=settings.grace_seconds)
        raise
    except Exception:
        log.exception(f"{phase} failed")
        raise
    finally:
        # Order matters: stop advertising first, so balancers move new calls
        # elsewhere, then let in-flight calls finish, then release the model.
        await health.enter_graceful_shutdown()
        grace_ends = loop.time() + settings.grace_seconds
        if drain is not None:
            try:
                await drain(settings.grace_seconds)
            except Exception:
                log.exception("drain failed")
        await server.stop(max(0.0, grace_ends - loop.time()))
        if shutdown is not None:
            try:
                await shutdown()
            except Exception:
                log.exception("shutdown failed")
        if settings.port_file:
            settings.port_file.unlink(missing_ok=True)
        if metrics_server is not None:
            metrics_server.close()
            port_file = metrics_port_file(settings.port_file, settings.metrics_port_file)
            if port_file is not None:
                port_file.unlink(missing_ok=True)
        stop_tracing()  # flushes spans still buffered
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("stopped")


def _start_metrics(settings: CommonSettings, host: str) -> MetricsServer | None:
    """The /metrics endpoint, or None when disabled (metrics_port empty or < 0)."""
    if settings.metrics_port is None or settings.metrics_port < 0:
        return None
    try:
        metrics_server = start_metrics_server(host.strip("[]"), settings.metrics_port)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {host}:{settings.metrics_port}: {e}") from e
    port_file = metrics_port_file(settings.port_file, settings.metrics_port_file)
    if port_file is not None:
        write_port_file(port_file, metrics_server.port)
    log.info("metrics", address=f"{host}:{metrics_server.port}", path="/metrics")
    return metrics_server


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> list[signal.Signals]:
    return [sig for sig in _SIGNALS if _add_signal_handler(loop, sig, stop.set)]


def _add_signal_handler(
    loop: asyncio.AbstractEventLoop, sig: signal.Signals, handler: Callable[[], object]
) -> bool:
    # Only possible in the main thread; elsewhere (some test runners) the
    # caller stops serve() by cancelling its task instead.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(sig, handler)
        return True
    return False


async def _watch_health(
    health: grpc_health.aio.HealthServicer,
    names: list[str],
    check: Callable[[], Awaitable[bool]],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Until `stop` is set: each `interval_s`, set every name's health from `check()`."""
    serving = True
    while not stop.is_set():
        try:
            ok = bool(await check())
        except Exception:
            log.exception("health check failed")
            ok = False
        if ok != serving:
            serving = ok
            status = health_pb2.HealthCheckResponse.SERVING if ok else NOT_SERVING
            log.warning("health", status="SERVING" if ok else "NOT_SERVING")
            for name in names:
                await health.set(name, status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _unadvertise(health: grpc_health.aio.HealthServicer) -> None:
    # enter_graceful_shutdown also ignores later set() calls, so a model load
    # finishing after the preStop cannot flip the pod back to SERVING.
    await health.enter_graceful_shutdown()
    log.info("not serving (SIGUSR1): still answering calls until SIGTERM")


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` is set first; True when `work` finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # re-raises what startup raised
    return True
