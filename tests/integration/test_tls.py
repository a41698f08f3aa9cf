"""TLS on every hop, over real processes: the gateway serves HTTPS, and the
gateway -> orchestrator -> stages gRPC hops use mutual TLS, all with
certificates made at test time; a client with a certificate from another CA,
none, or plaintext is refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stageflow.cli.cluster import LocalCluster
from stageflow.client import ClientSettings, StageflowClient, StageflowClientError

WAIT = 300.0


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1/localhost usable as server and as client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca[1], hashes.SHA256())
    )
    return cert, key


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    wrong_ca: Path
    intruder_cert: Path
    intruder_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, wrong = _ca("stageflow test CA"), _ca("some other CA")
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    wrong_path = folder / "wrong-ca.crt"
    wrong_path.write_bytes(wrong[0].public_bytes(serialization.Encoding.PEM))
    cert, key = _write(folder, "internal", *_leaf("stageflow internal", ca))
    intruder_cert, intruder_key = _write(folder, "intruder", *_leaf("intruder", wrong))
    return Pki(ca_path, cert, key, wrong_path, intruder_cert, intruder_key)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path, pki: Pki
) -> Iterator[LocalCluster]:
    with LocalCluster(
        state_dir=tmp_path_factory.mktemp("tls-cluster"),
        models_dir=fixture_models,
        torch_threads=1,
        gateway_port=0,
        tls=(pki.cert, pki.key, pki.ca),
    ) as running:
        yield running


def test_a_job_over_https_and_mutual_tls_on_every_hop(cluster: LocalCluster, pki: Pki) -> None:
    url = cluster.gateway_url
    assert url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=url, verify=trust, timeout=WAIT) as http:
        assert http.get("/readyz").status_code == 200  # the gateway reaches the orchestrator
        reply = http.post(
            "/v1/jobs", json={"bundle": {"base": "a circle"}, "seed": 3, "width": 32, "height": 32}
        )
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["job"]["job_id"]
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            last = [line for line in events.iter_lines() if line.startswith("data: ")][-1]
        finished = json.loads(last.removeprefix("data: "))["finished"]
        assert finished["state"] == "JOB_STATE_SUCCEEDED", finished  # orchestrator -> stages
    with pytest.raises(httpx.HTTPError):  # no plaintext HTTP on the HTTPS port
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # a client not trusting our CA refuses it
        httpx.get(url + "/healthz", verify=ssl.create_default_context(cafile=str(pki.wrong_ca)))


async def _pipelines(settings: ClientSettings) -> list[str]:
    async with StageflowClient(settings=settings) as client:
        return [p.name for p in await client.pipelines()]


def test_grpc_needs_a_client_certificate_from_our_ca(cluster: LocalCluster, pki: Pki) -> None:
    address = cluster.orchestrator_address
    good = ClientSettings(
        address=address,
        timeout_seconds=10,
        tls_ca=str(pki.ca),
        tls_cert=str(pki.cert),
        tls_key=str(pki.key),
    )
    assert "default" in asyncio.run(_pipelines(good))
    refused = {
        "a certificate from another CA": ClientSettings(
            address=address,
            timeout_seconds=10,
            tls_ca=str(pki.ca),
            tls_cert=str(pki.intruder_cert),
            tls_key=str(pki.intruder_key),
        ),
        "no client certificate": ClientSettings(
            address=address, timeout_seconds=10, tls_ca=str(pki.ca)
        ),
        "plaintext": ClientSettings(address=address, timeout_seconds=10),
        "a server it cannot verify": ClientSettings(
            address=address,
            timeout_seconds=10,
            tls_ca=str(pki.wrong_ca),
            tls_cert=str(pki.cert),
            tls_key=str(pki.key),
        ),
    }
    for case, settings in refused.items():
        with pytest.raises(StageflowClientError) as err:
            asyncio.run(_pipelines(settings))
        assert err.value.status == "UNAVAILABLE", case
