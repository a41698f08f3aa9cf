"""Client channels with the same explicit limits the servers use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from stageflow.serving.tracing import client_interceptors

MiB = 1024 * 1024

# Reconnect backoff of every channel, bounded: gRPC's default grows to 120 s,
# so a channel to a server that was down a minute stayed failed for 20 s and
# more after the server was back. Here a lost connection is retried at least
# every second (each attempt given at least a second to connect).
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def client_channel(
    address: str,
    max_message_bytes: int = 16 * MiB,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to ``host:port``.

    gRPC's default receive limit is 4 MiB; both directions are set here so a
    large message fails the same way on either side. The reconnect backoff is
    bounded (RECONNECT_OPTIONS). `options` adds channel
    arguments, e.g. a service config choosing the load-balancing policy.
    Calls carry the current trace context (W3C traceparent) after `interceptors`.
    With `credentials` (stageflow.serving.tls) the channel is TLS.
    """
    channel_options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *RECONNECT_OPTIONS,
        *options,
    ]
    chain = [*interceptors, *client_interceptors()]
    if credentials is not None:
        return grpc.aio.secure_channel(
            address, credentials, options=channel_options, interceptors=chain
        )
    return grpc.aio.insecure_channel(address, options=channel_options, interceptors=chain)
