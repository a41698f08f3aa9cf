"""Artifacts: content-addressed keys, stored once, verified on read.

ArtifactStoreContract runs over LocalStore here and over a real S3 server in
tests/integration/test_s3_stores.py."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from stageflow.core.artifacts import Artifact, artifact_key, get_artifact, put_artifact
from stageflow.core.errors import DataLoss, InvalidArgument, NotFound
from stageflow.core.storage import LocalStore, ObjectStore


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.puts += 1
        super().put(key, data, content_type)


def test_key_layout() -> None:
    digest = "ab" + "0" * 62
    assert artifact_key("/jobs/j1/", digest, "png") == f"jobs/j1/sha256/ab/{digest}.png"


class ArtifactStoreContract:
    """Artifacts over any ObjectStore. A subclass provides the `store` fixture."""

    def test_put_then_get_roundtrip(self, store: ObjectStore) -> None:
        prefix = f"t-{uuid.uuid4().hex[:12]}"  # a server's bucket is shared
        data = b"png bytes"
        artifact = put_artifact(store, data, prefix=prefix)
        digest = hashlib.sha256(data).hexdigest()
        assert artifact == Artifact(
            key=f"{prefix}/sha256/{digest[:2]}/{digest}.png",
            sha256=digest,
            size_bytes=len(data),
            media_type="image/png",
        )
        assert get_artifact(store, artifact.key, artifact.sha256) == data


class TestArtifactsOnLocalStore(ArtifactStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        return LocalStore(tmp_path / "store")


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    first = put_artifact(store, b"same")
    second = put_artifact(store, b"same")
    assert first == second
    assert store.puts == 1
    put_artifact(store, b"other")
    assert store.puts == 2


def test_media_type_sets_the_extension(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert put_artifact(store, b"x", media_type="image/webp").key.endswith(".webp")
    assert put_artifact(store, b"y", media_type="application/x-unknown").key.endswith(".bin")


def test_changed_bytes_are_data_loss(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    artifact = put_artifact(store, b"original")
    store.put(artifact.key, b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(DataLoss) as err:
        get_artifact(store, artifact.key, artifact.sha256, field="image")
    assert err.value.message == (
        f"image {artifact.key}: sha256 mismatch, expected {artifact.sha256} got {actual}"
    )


def test_missing_artifact_names_field_and_key(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    key = artifact_key("artifacts", digest, "png")
    with pytest.raises(NotFound, match=f"^mask {key}: not found"):
        get_artifact(LocalStore(tmp_path), key, digest, field="mask")


@pytest.mark.parametrize("sha256", ["", "abc", "A" * 64, "g" * 64, "0" * 65])
def test_malformed_digest_is_invalid_argument(tmp_path: Path, sha256: str) -> None:
    store = LocalStore(tmp_path)
    artifact = put_artifact(store, b"x")
    with pytest.raises(InvalidArgument) as err:
        get_artifact(store, artifact.key, sha256, field="image")
    assert err.value.field == "image.sha256"


def test_bad_key_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        get_artifact(LocalStore(tmp_path), "../etc/passwd", "0" * 64, field="image")
    assert err.value.field == "image.key"
