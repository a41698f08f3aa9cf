"""TLS for the gRPC hops: a server's credentials and a client channel's, from PEM files.

Every process takes `--tls-cert`, `--tls-key` and `--tls-ca` (CommonSettings):
with a certificate and key a server listens with TLS; with a CA as well it
requires every client to present a certificate signed by that CA (mutual
TLS). The same three files make the process's client side: the CA verifies
the servers it calls (the orchestrator's stages) and the certificate is the
one it presents to them. Without a certificate everything stays plaintext
(loopback development, the tests).
"""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def server_credentials(
    cert: Path | None, key: Path | None, ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS with `cert`/`key`; client certificates signed by `ca` required when
    it is given. None (plaintext) without a certificate."""
    if cert is None or key is None:
        return None
    root = _read(ca)
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def channel_credentials(
    cert: Path | None, key: Path | None, ca: Path | None
) -> grpc.ChannelCredentials | None:
    """Credentials of a client channel: servers verified against `ca`, and
    `cert`/`key` presented for mutual TLS. None (plaintext) when neither a CA
    nor a certificate is given."""
    if ca is None and cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(key) if cert is not None else None,
        certificate_chain=_read(cert),
    )
