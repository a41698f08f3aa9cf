"""The stores, the artifacts and the model repository over a real S3 server
(SeaweedFS, a process of its own: so these are integration tests).

The contracts are the unit tier's, run there over LocalStore and a local folder;
here they run over S3, with what only S3 does (presigned URLs, buckets, secrets).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from stageflow.core.errors import NotFound, StageflowError
from stageflow.core.storage import ObjectStore, S3Store, open_store
from stageflow.inference.fixtures import ESRGAN_FOLDER, SD_FOLDER, SDXL_FOLDER, SDXL_REFINER_FOLDER
from stageflow.inference.repository import ModelRepository
from tests.s3server import S3ServerInfo
from tests.unit.inference import test_repository as repository_tests
from tests.unit.serving import test_artifacts as artifact_tests
from tests.unit.serving import test_storage as storage_tests

BUCKET = "stageflow-stores"


@pytest.fixture(scope="module")
def s3_store(s3_server: S3ServerInfo) -> S3Store:
    # One bucket for the module: SeaweedFS gives each bucket its own volume,
    # and a bucket per test would cost time and run out of volumes.
    return s3_server.store(BUCKET)


class TestS3Store(storage_tests.StoreContract):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> ObjectStore:
        return s3_store

    def test_presigned_url_with_tampered_signature_is_rejected(
        self, s3_store: S3Store, prefix: str
    ) -> None:
        s3_store.put(f"{prefix}/secret.png", b"private")
        url = s3_store.url(f"{prefix}/secret.png")
        head, sig = url.rsplit("X-Amz-Signature=", 1)
        forged = head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(forged, timeout=10)
        assert err.value.code == 403

    def test_bucket_is_created_when_missing(self, s3_server: S3ServerInfo, prefix: str) -> None:
        store = s3_server.store(f"{prefix}-new")
        store.put("k", b"v")
        assert s3_server.store(f"{prefix}-new").get("k") == b"v"

    def test_wrong_secret_is_an_error_without_the_secret(self, s3_server: S3ServerInfo) -> None:
        with pytest.raises(StageflowError) as err:
            S3Store(
                s3_server.endpoint,
                BUCKET,
                access_key=s3_server.access_key,
                secret_key="wrong-secret-value",
            )
        assert err.value.code == "INTERNAL"
        assert not isinstance(err.value, NotFound)
        assert "wrong-secret-value" not in str(err.value)

    def test_open_store_s3_url(
        self, s3_server: S3ServerInfo, s3_store: S3Store, prefix: str
    ) -> None:
        s3_store.put(f"{prefix}/via-url", b"same bucket")
        store = open_store(
            f"s3://{BUCKET}?endpoint={s3_server.endpoint}",
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
        )
        assert isinstance(store, S3Store)
        assert store.get(f"{prefix}/via-url") == b"same bucket"

    def test_public_endpoint_presigns_for_the_address_clients_use(
        self, s3_server: S3ServerInfo, prefix: str
    ) -> None:
        """Services reach the store at one address (127.0.0.1 here, minio:9000 in a
        cluster); the presigned URL names the other and still fetches the object."""
        port = urllib.parse.urlsplit(s3_server.endpoint).port
        store = open_store(
            f"s3://{BUCKET}?endpoint={s3_server.endpoint}&public_endpoint=http://localhost:{port}",
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
        )
        store.put(f"{prefix}/public.png", b"from outside")
        url = store.url(f"{prefix}/public.png", expires=timedelta(minutes=5))
        assert url.startswith(f"http://localhost:{port}/{BUCKET}/{prefix}/public.png?")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"from outside"


class TestArtifactsOnS3(artifact_tests.ArtifactStoreContract):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> ObjectStore:
        return s3_store


# --- the model repository ------------------------------------------------------


@pytest.fixture(scope="module")
def sd_folder(fixture_models: Path) -> Path:
    return fixture_models / SD_FOLDER


@pytest.fixture(scope="module")
def sdxl_folder(fixture_models: Path) -> Path:
    return fixture_models / SDXL_FOLDER


@pytest.fixture(scope="module")
def sdxl_refiner_folder(fixture_models: Path) -> Path:
    return fixture_models / SDXL_REFINER_FOLDER


@pytest.fixture(scope="module")
def esrgan_folder(fixture_models: Path) -> Path:
    return fixture_models / ESRGAN_FOLDER


UNET_WEIGHTS = repository_tests.UNET_WEIGHTS


class TestS3Repository(repository_tests.RepositoryContract):
    @pytest.fixture
    def repo(self, s3_server: S3ServerInfo, tmp_path: Path) -> ModelRepository:
        # A fresh prefix per test: the bucket is shared by the session.
        return ModelRepository(
            f"s3://models-itest/r-{uuid.uuid4().hex[:8]}?endpoint={s3_server.endpoint}",
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
            cache_dir=tmp_path / "cache",
        )

    def test_materialize_caches_by_fingerprint(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        created = repo.import_folder(sd_folder, "tiny-sd", "1")
        first = repo.materialize("tiny-sd", "1")
        assert first == repo.cache_dir / "tiny-sd" / "1" / created.fingerprint
        # A second call reads nothing remote: it works with the remote file gone.
        repo._store.delete(repository_tests.remote_key(repo, "tiny-sd", "1", UNET_WEIGHTS))
        assert repo.materialize("tiny-sd", "1") == first

    def test_corrupted_cache_is_detected_and_downloaded_again(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        repo.import_folder(sd_folder, "tiny-sd", "1")
        folder = repo.materialize("tiny-sd", "1")
        (folder / UNET_WEIGHTS).write_bytes(b"flipped bits")
        again = repo.materialize("tiny-sd", "1")
        assert (again / UNET_WEIGHTS).read_bytes() == (sd_folder / UNET_WEIGHTS).read_bytes()
