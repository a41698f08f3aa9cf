"""LocalStore and S3Store must behave alike: one suite runs over both."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument, NotFound, StageflowError, Unavailable
from stageflow.core.storage import LocalStore, ObjectStore, S3Store, open_store
from tests.s3server import S3ServerInfo, free_port_pairs


def test_put_get_exists_roundtrip(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/a/b.png"
    assert not store.exists(key)
    store.put(key, b"\x89PNG payload", content_type="image/png")
    assert store.exists(key)
    assert store.get(key) == b"\x89PNG payload"


def test_empty_object_roundtrips(store: ObjectStore, prefix: str) -> None:
    store.put(f"{prefix}/empty", b"")
    assert store.get(f"{prefix}/empty") == b""


def test_missing_key_is_not_found_naming_the_key(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(NotFound, match=f"{prefix}/nope.png"):
        store.get(f"{prefix}/nope.png")
    assert not store.exists(f"{prefix}/nope.png")


def test_delete_removes_and_tolerates_missing(store: ObjectStore, prefix: str) -> None:
    store.put(f"{prefix}/x", b"1")
    store.delete(f"{prefix}/x")
    assert not store.exists(f"{prefix}/x")
    with pytest.raises(NotFound):
        store.get(f"{prefix}/x")
    store.delete(f"{prefix}/x")  # again: not an error


def test_overwrite_replaces_content(store: ObjectStore, prefix: str) -> None:
    store.put(f"{prefix}/k", b"old" * 1000)
    store.put(f"{prefix}/k", b"new")
    assert store.get(f"{prefix}/k") == b"new"


def test_readers_never_see_a_partial_object(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/hot"
    a, b = b"a" * 300_000, b"b" * 200_000
    store.put(key, a)
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(store.get(key))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            store.put(key, a if i % 2 else b)
    finally:
        done.set()
        reader.join()
    assert seen <= {a, b}, "a reader saw a partially written object"


@pytest.mark.parametrize("key", ["", "/abs/key", "a/../b", "..", "a//b", "./a", "a\\b"])
def test_keys_that_could_escape_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        store.put(key, b"x")
    assert err.value.field == "key"
    with pytest.raises(InvalidArgument):
        store.get(key)


def test_url_fetches_the_object(store: ObjectStore, prefix: str) -> None:
    store.put(f"{prefix}/u.png", b"fetch me", content_type="image/png")
    url = store.url(f"{prefix}/u.png", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"fetch me"


def test_describe_names_the_location(store: ObjectStore) -> None:
    text = store.describe()
    assert text and "secret" not in text.lower()


# --- LocalStore only ---------------------------------------------------------


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(3):
        store.put("d/k", bytes([i]) * 10)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k"]
    assert store.url("d/k") == (tmp_path / "d" / "k").resolve().as_uri()


# --- S3Store only ------------------------------------------------------------


def test_presigned_url_with_tampered_signature_is_rejected(s3_store: S3Store, prefix: str) -> None:
    s3_store.put(f"{prefix}/secret.png", b"private")
    url = s3_store.url(f"{prefix}/secret.png")
    head, sig = url.rsplit("X-Amz-Signature=", 1)
    forged = head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(forged, timeout=10)
    assert err.value.code == 403


def test_bucket_is_created_when_missing(s3_server: S3ServerInfo, prefix: str) -> None:
    store = s3_server.store(f"{prefix}-new")
    store.put("k", b"v")
    assert s3_server.store(f"{prefix}-new").get("k") == b"v"


def test_wrong_secret_is_an_error_without_the_secret(s3_server: S3ServerInfo) -> None:
    with pytest.raises(StageflowError) as err:
        S3Store(
            s3_server.endpoint,
            "stageflow-unit",
            access_key=s3_server.access_key,
            secret_key="wrong-secret-value",
        )
    assert err.value.code == "INTERNAL"
    assert not isinstance(err.value, NotFound)
    assert "wrong-secret-value" not in str(err.value)


def test_unreachable_endpoint_is_unavailable_and_fails_fast() -> None:
    (port,) = free_port_pairs(1)  # nothing listens there
    start = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        S3Store(
            f"http://127.0.0.1:{port}", "bucket", access_key="a", secret_key="s", retry_seconds=1
        )  # the default rides out a 30 s outage: tests/unit/core/test_s3_retry.py
    assert time.monotonic() - start < 5


# --- open_store ----------------------------------------------------------------


def test_open_store_s3_url(s3_server: S3ServerInfo, s3_store: S3Store, prefix: str) -> None:
    s3_store.put(f"{prefix}/via-url", b"same bucket")
    store = open_store(
        f"s3://stageflow-unit?endpoint={s3_server.endpoint}",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    assert isinstance(store, S3Store)
    assert store.get(f"{prefix}/via-url") == b"same bucket"


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = open_store((tmp_path / "a").as_uri())
    assert isinstance(by_uri, LocalStore) and by_uri.root == tmp_path / "a"
    monkeypatch.chdir(tmp_path)
    relative = open_store("var/store")
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "var" / "store"


@pytest.mark.parametrize(
    "url",
    ["", "s3://bucket", "s3://?endpoint=http://h:1", "ftp://host/x", "file://host/x", "gs://b"],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_public_endpoint_presigns_for_the_address_clients_use(
    s3_server: S3ServerInfo, prefix: str
) -> None:
    """Services reach the store at one address (127.0.0.1 here, minio:9000 in a
    cluster); the presigned URL names the other and still fetches the object."""
    port = urllib.parse.urlsplit(s3_server.endpoint).port
    store = open_store(
        f"s3://stageflow-unit?endpoint={s3_server.endpoint}"
        f"&public_endpoint=http://localhost:{port}",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    store.put(f"{prefix}/public.png", b"from outside")
    url = store.url(f"{prefix}/public.png", expires=timedelta(minutes=5))
    assert url.startswith(f"http://localhost:{port}/stageflow-unit/{prefix}/public.png?")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"from outside"
