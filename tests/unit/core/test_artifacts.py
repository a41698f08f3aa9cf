"""The store repairs instead of trusting: a put of an existing key checks the
object there (size and digest) and replaces a bad one; a miss names no server path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from stageflow.core.artifacts import artifact_intact, get_artifact, put_artifact, stored_digest
from stageflow.core.errors import NotFound, Unavailable
from stageflow.core.storage import LocalStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.puts += 1
        super().put(key, data, content_type)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"junk", id="overwritten"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 1]), id="one-bit"),
        pytest.param(lambda data: b"", id="emptied"),
    ],
)
def test_a_put_over_a_damaged_object_replaces_it(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    store = CountingStore(tmp_path)
    artifact = put_artifact(store, PNG)
    (tmp_path / artifact.key).write_bytes(damage(PNG))

    again = put_artifact(store, PNG)

    assert again == artifact
    assert store.puts == 2
    assert get_artifact(store, artifact.key, artifact.sha256) == PNG


def test_a_put_over_an_intact_object_writes_nothing(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    first = put_artifact(store, PNG)
    assert put_artifact(store, PNG) == first
    assert store.puts == 1


def test_stored_digest_and_intact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    artifact = put_artifact(store, PNG)
    assert stored_digest(store, artifact.key) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    assert stored_digest(store, "artifacts/none.png") is None
    assert artifact_intact(store, artifact.key, artifact.sha256, artifact.size_bytes)
    assert artifact_intact(store, artifact.key, artifact.sha256)  # size unknown: digest only
    assert not artifact_intact(store, artifact.key, artifact.sha256, artifact.size_bytes + 1)
    assert not artifact_intact(store, artifact.key, "0" * 64)
    assert not artifact_intact(store, "artifacts/none.png", artifact.sha256)


def test_an_unreadable_store_is_not_intact(tmp_path: Path) -> None:
    class Down(LocalStore):
        def get(self, key: str) -> bytes:
            raise Unavailable("object store unreachable")

    store = Down(tmp_path)
    assert not artifact_intact(store, "artifacts/a.png", "0" * 64)


def test_a_missing_input_names_the_field_not_the_servers_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "secret-server-folder")
    with pytest.raises(NotFound) as caught:
        get_artifact(store, "artifacts/none.png", "0" * 64, field="image")
    assert caught.value.message == "image artifacts/none.png: not found in the object store"
    assert "secret-server-folder" not in str(caught.value)
