"""One store-URL grammar: the stores and the model repository read the same URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stageflow.core.errors import InvalidArgument
from stageflow.core.storage import (
    LocalStore,
    PrefixedStore,
    StoreLocation,
    open_store,
    parse_store_url,
)
from stageflow.inference.repository import ModelRepository


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("var/store", StoreLocation(folder=Path("var/store"))),
        ("file:///srv/store", StoreLocation(folder=Path("/srv/store"))),
        (
            "s3://bucket?endpoint=http://h:9000",
            StoreLocation(bucket="bucket", endpoint="http://h:9000"),
        ),
        (
            "s3://bucket/models/v1/?endpoint=https://h&region=eu&public_endpoint=https://p",
            StoreLocation(
                bucket="bucket",
                prefix="models/v1",
                endpoint="https://h",
                region="eu",
                public_endpoint="https://p",
            ),
        ),
    ],
)
def test_the_grammar(url: str, expected: StoreLocation) -> None:
    assert parse_store_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "URL is empty"),
        ("s3://bucket", "s3://bucket[/prefix]?endpoint="),
        ("s3://?endpoint=http://h", "s3://bucket[/prefix]?endpoint="),
        ("s3://bkt/a/../c?endpoint=http://h", "'..' segments"),
        ("s3://My_Bucket?endpoint=http://h", "bucket of store URL"),
        ("s3://ab?endpoint=http://h", "3-63 characters"),
        ("s3://a..b?endpoint=http://h", "must not hold '..'"),
        ("s3://10.0.0.1?endpoint=http://h", "must not be an IP address"),
        ("file://host/x", "file:///absolute/path"),
        ("gs://bucket", "unsupported store URL scheme 'gs'"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_store_url(url)
    assert problem in str(err.value)


def test_the_repository_names_itself_in_its_errors() -> None:
    with pytest.raises(ValueError, match="an S3 model repository URL"):
        parse_store_url("s3://bucket/prefix", what="model repository")


def test_a_prefixed_store_keeps_every_key_below_its_prefix(tmp_path: Path) -> None:
    root = LocalStore(tmp_path)
    store = PrefixedStore(root, "team/a/")
    store.put("x/1.png", b"one")
    store.put_file("x/2.png", _file(tmp_path / "src", b"two"))
    root.put("elsewhere.png", b"no")

    assert (tmp_path / "team" / "a" / "x" / "1.png").read_bytes() == b"one"
    assert store.get("x/2.png") == b"two"
    assert store.list_keys() == ["x/1.png", "x/2.png"]
    assert store.list_keys("x/2") == ["x/2.png"]
    assert store.exists("x/1.png") and not store.exists("elsewhere.png")
    store.get_file("x/1.png", tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == b"one"
    store.delete("x/1.png")
    assert store.list_keys() == ["x/2.png"]
    assert store.url("x/2.png").endswith("/team/a/x/2.png")
    with pytest.raises(InvalidArgument, match=r"'\.\.' segments"):
        store.get("../elsewhere.png")


def test_open_store_and_the_repository_read_the_same_url(tmp_path: Path) -> None:
    url = (tmp_path / "root").as_uri()
    store = open_store(url)
    assert isinstance(store, LocalStore) and store.root == tmp_path / "root"
    assert ModelRepository(url, cache_dir=tmp_path / "cache").describe() == str(tmp_path / "root")


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
