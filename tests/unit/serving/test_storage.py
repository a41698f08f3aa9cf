"""LocalStore and S3Store must behave alike: one suite, StoreContract, runs over
both: over LocalStore here, over a real S3 server in
tests/integration/test_s3_stores.py (a server is a process: not a unit test)."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument, NotFound, Unavailable
from stageflow.core.storage import LocalStore, ObjectStore, S3Store, open_store
from tests.s3server import free_port_pairs


class StoreContract:
    """What every ObjectStore does. A subclass provides the `store` fixture."""

    @pytest.fixture
    def prefix(self) -> str:
        """A key prefix no other test uses (a server's bucket is shared)."""
        return f"t-{uuid.uuid4().hex[:12]}"

    def test_put_get_exists_roundtrip(self, store: ObjectStore, prefix: str) -> None:
        key = f"{prefix}/a/b.png"
        assert not store.exists(key)
        store.put(key, b"\x89PNG payload", content_type="image/png")
        assert store.exists(key)
        assert store.get(key) == b"\x89PNG payload"

    def test_empty_object_roundtrips(self, store: ObjectStore, prefix: str) -> None:
        store.put(f"{prefix}/empty", b"")
        assert store.get(f"{prefix}/empty") == b""

    def test_missing_key_is_not_found_naming_the_key(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(NotFound, match=f"{prefix}/nope.png"):
            store.get(f"{prefix}/nope.png")
        assert not store.exists(f"{prefix}/nope.png")

    def test_delete_removes_and_tolerates_missing(self, store: ObjectStore, prefix: str) -> None:
        store.put(f"{prefix}/x", b"1")
        store.delete(f"{prefix}/x")
        assert not store.exists(f"{prefix}/x")
        with pytest.raises(NotFound):
            store.get(f"{prefix}/x")
        store.delete(f"{prefix}/x")  # again: not an error

    def test_overwrite_replaces_content(self, store: ObjectStore, prefix: str) -> None:
        store.put(f"{prefix}/k", b"old" * 1000)
        store.put(f"{prefix}/k", b"new")
        assert store.get(f"{prefix}/k") == b"new"

    def test_readers_never_see_a_partial_object(self, store: ObjectStore, prefix: str) -> None:
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
    def test_keys_that_could_escape_are_rejected(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidArgument) as err:
            store.put(key, b"x")
        assert err.value.field == "key"
        with pytest.raises(InvalidArgument):
            store.get(key)

    def test_url_fetches_the_object(self, store: ObjectStore, prefix: str) -> None:
        store.put(f"{prefix}/u.png", b"fetch me", content_type="image/png")
        url = store.url(f"{prefix}/u.png", expires=timedelta(minutes=5))
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"fetch me"

    def test_describe_names_the_location(self, store: ObjectStore) -> None:
        text = store.describe()
        assert text and "secret" not in text.lower()


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        return LocalStore(tmp_path / "store")

    def test_leaves_no_temp_files(self, tmp_path: Path) -> None:
        store = LocalStore(tmp_path)
        for i in range(3):
            store.put("d/k", bytes([i]) * 10)
        assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k"]
        assert store.url("d/k") == (tmp_path / "d" / "k").resolve().as_uri()


# --- S3Store without a server ------------------------------------------------------


def test_unreachable_endpoint_is_unavailable_and_fails_fast() -> None:
    (port,) = free_port_pairs(1)  # nothing listens there
    start = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        S3Store(
            f"http://127.0.0.1:{port}", "bucket", access_key="a", secret_key="s", retry_seconds=1
        )  # the default rides out a 30 s outage: tests/unit/core/test_s3_retry.py
    assert time.monotonic() - start < 5


# --- open_store ----------------------------------------------------------------


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
