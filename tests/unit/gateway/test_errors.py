"""The gateway's error answers stay short whatever the caller sent."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from stageflow.gateway.errors import FIELD_CHARS, from_exception


def test_a_validation_error_names_its_field() -> None:
    err = RequestValidationError([{"loc": ("body", "bundle", "seed"), "msg": "bad"}])
    assert from_exception(err) == (400, "INVALID_ARGUMENT", "bundle.seed: bad", "bundle.seed")


def test_a_callers_own_key_is_not_echoed_whole() -> None:
    key = "k" * 100_000
    err = RequestValidationError([{"loc": ("body", key), "msg": "Extra inputs are not permitted"}])
    _, _, message, field = from_exception(err)
    assert field is not None and len(field) == FIELD_CHARS
    assert len(message) < FIELD_CHARS + 40
