"""`python -m stageflow.gateway`: settings -> app -> uvicorn on a bound socket.

The socket is bound here (port 0 picks a free one) and its port written to
--port-file before serving, as every stageflow server does, so a launcher
(`stageflow up`, the tests) finds it; SIGTERM/SIGINT drain through uvicorn.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import uvicorn

from stageflow.client import ClientSettings
from stageflow.core.logging import configure_logging, get_logger
from stageflow.core.settings import load_settings
from stageflow.gateway.app import create_app
from stageflow.gateway.settings import GatewaySettings


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # that say they are TCP; with it on, every small answer on a kept-alive
    # connection waited for the client's delayed ACK (~40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def _serve(settings: GatewaySettings) -> None:
    from stageflow.serving.server import write_port_file

    client = ClientSettings(
        address=settings.orchestrator_address,
        timeout_seconds=settings.request_timeout_seconds,
        tls_ca=str(settings.tls_ca or ""),
        tls_cert=str(settings.tls_cert or "") if settings.tls_ca else "",
        tls_key=str(settings.tls_key or "") if settings.tls_ca else "",
    )
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(client, settings),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    server = uvicorn.Server(config)
    get_logger(__name__).info(
        "gateway.listening",
        url=f"{'https' if settings.tls_cert else 'http'}://{settings.host}:{port}",
        orchestrator=client.address,
    )
    if settings.port_file is not None:
        write_port_file(settings.port_file, port)
    try:
        await server.serve(sockets=[sock])
    finally:
        if settings.port_file is not None:
            settings.port_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(GatewaySettings, list(argv) if argv is not None else None)
    configure_logging(level=settings.log_level, json=settings.log_json, service="gateway")
    try:
        asyncio.run(_serve(settings))
    except OSError as err:  # the address cannot be bound: one line, not a traceback
        raise SystemExit(
            f"gateway: cannot serve on {settings.host}:{settings.port}: {err}"
        ) from None


if __name__ == "__main__":
    main()
