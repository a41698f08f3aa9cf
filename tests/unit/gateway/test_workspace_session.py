"""The workspace's sign-in cookie and redirect target: pure helpers."""

from __future__ import annotations

import pytest

from stageflow.gateway.workspace.cookie import SessionCodec
from stageflow.gateway.workspace.session import safe_next

SECRET = "s" * 32


def test_a_sealed_key_opens_only_with_the_same_secret_and_before_it_expires() -> None:
    codec = SessionCodec(SECRET, max_age_s=60)
    value = codec.seal("sf_key", now=1000.0)
    assert "sf_key" not in value  # sealed, not only signed
    assert codec.open(value, now=1059.0) == "sf_key"
    assert codec.open(value, now=1060.0) is None  # expired
    assert SessionCodec("t" * 32, max_age_s=60).open(value, now=1001.0) is None
    assert SessionCodec(SECRET, max_age_s=60).open(value, now=1001.0) == "sf_key"


@pytest.mark.parametrize("value", ["", "not base64 at all!", "AAAA", None, "x" * 5000])
def test_garbage_is_no_session(value: str | None) -> None:
    assert SessionCodec(SECRET, 60).open(value) is None


def test_one_altered_character_is_no_session() -> None:
    codec = SessionCodec(SECRET, 60)
    value = codec.seal("sf_key")
    for i in range(0, len(value), 7):
        flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
        assert codec.open(flipped) is None


def test_without_a_secret_each_process_has_its_own() -> None:
    value = SessionCodec("", 60).seal("sf_key")
    assert SessionCodec("", 60).open(value) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/gallery?page=2", "/gallery?page=2"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("gallery", "/"),
    ],
)
def test_after_sign_in_only_a_path_of_this_site(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
