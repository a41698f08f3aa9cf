"""A tiny real server process for the signal tests (run by test_server_signals.py).

`/stageflow.test.Slow/Count` takes b"N,DELAY" and streams N messages, one
every DELAY seconds: an in-flight call that a SIGTERM must let finish.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from stageflow.core.logging import configure_logging
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import CommonSettings, load_settings

SERVICE = "stageflow.test.Slow"


async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    n, delay = request.decode().split(",")
    for i in range(int(n)):
        await asyncio.sleep(float(delay))
        yield str(i).encode()


def _identity(x: bytes) -> bytes:
    return x


def register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_stream_rpc_method_handler(count, _identity, _identity)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Count": handler})]
    )


def main(argv: list[str]) -> None:
    settings = load_settings(CommonSettings, argv)
    configure_logging(level=settings.log_level, json=settings.log_json, service="slow")
    asyncio.run(serve([Service(SERVICE, register)], settings))


if __name__ == "__main__":
    main(sys.argv[1:])
