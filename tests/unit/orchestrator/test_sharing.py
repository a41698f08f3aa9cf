"""Share tokens: signed over path and expiry; tampered, expired and rotated tokens fail."""

from __future__ import annotations

import pytest

from stageflow.core.errors import FailedPrecondition, InvalidArgument, OutOfRange, PermissionDenied
from stageflow.orchestrator.sharing import ShareSigner

SECRET = "share-secret-0123456789abcdef0123"
NOW = 1_800_000_000.0


def _token(signer: ShareSigner, expires_in: int = 60) -> str:
    return signer.token(signer.sign("job-0123456789abcdef", 2, expires_in, now=NOW))


def test_a_token_opens_until_it_expires() -> None:
    signer = ShareSigner(SECRET, 3600)
    token = _token(signer)
    assert token.startswith(f"job-0123456789abcdef/2/{int(NOW) + 60}/")
    shared = signer.verify(token, now=NOW + 59)
    assert (shared.job_id, shared.version, shared.expires) == ("job-0123456789abcdef", 2, NOW + 60)
    with pytest.raises(OutOfRange, match="expired"):
        signer.verify(token, now=NOW + 60)


def test_every_changed_byte_is_denied() -> None:
    signer = ShareSigner(SECRET, 3600)
    token = _token(signer)
    for i, char in enumerate(token):
        if char == "/":
            continue
        swapped = "1" if char != "1" else "2"
        tampered = token[:i] + swapped + token[i + 1 :]
        with pytest.raises(PermissionDenied):
            signer.verify(tampered, now=NOW)
    # A later expiry is a changed byte too, not a longer link.
    job, version, expires, sig = token.split("/")
    with pytest.raises(PermissionDenied):
        signer.verify(f"{job}/{version}/{int(expires) + 3600}/{sig}", now=NOW)
    # An earlier one is denied as forged, never reported as merely expired.
    with pytest.raises(PermissionDenied):
        signer.verify(f"{job}/{version}/{int(NOW) - 10}/{sig}", now=NOW)


def test_rotating_the_secret_revokes_every_link() -> None:
    token = _token(ShareSigner(SECRET, 3600))
    with pytest.raises(PermissionDenied):
        ShareSigner(SECRET[::-1], 3600).verify(token, now=NOW)


def test_limits_and_off() -> None:
    signer = ShareSigner(SECRET, 3600)
    assert signer.sign("job-0123456789abcdef", 1, 0, now=NOW).expires == NOW + 3600  # 0: the max
    with pytest.raises(InvalidArgument) as err:
        signer.sign("job-0123456789abcdef", 1, 3601, now=NOW)
    assert err.value.field == "expires_in_seconds"
    with pytest.raises(FailedPrecondition, match="sharing is off"):
        ShareSigner("", 3600).sign("job-0123456789abcdef", 1, 60)
    with pytest.raises(ValueError, match="at least 32"):
        ShareSigner("short", 3600)
