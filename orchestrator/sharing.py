"""Share links: a signed token naming one job version's final image.

A token is ``<job_id>/<version>/<expiry unix seconds>/<signature>``, the
signature being HMAC-SHA256 (url-safe base64, unpadded) under the share
secret over ``<job_id>/<version>/<expiry>``. The token *is* the authority:
whoever holds it reads that one image until the expiry, without an API key,
and nothing else. Verification checks the signature first (any changed byte,
the expiry's included: PERMISSION_DENIED), then the expiry (OUT_OF_RANGE), so
a forged expiry never reads as merely expired. A new secret invalidates every
token signed under the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from stageflow.core.errors import FailedPrecondition, InvalidArgument, OutOfRange, PermissionDenied

MIN_SECRET_CHARS = 32
_TOKEN = re.compile(r"^(job-[0-9a-f]{16})/([1-9][0-9]{0,8})/([0-9]{1,12})/([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Shared:
    job_id: str
    version: int
    expires: int  # unix seconds


def _signature(secret: str, job_id: str, version: int, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"{job_id}/{version}/{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


class ShareSigner:
    """Signs and verifies share tokens under one secret ("" disables sharing)."""

    def __init__(self, secret: str, max_seconds: int) -> None:
        if secret and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"the share secret must be at least {MIN_SECRET_CHARS} characters")
        self._secret = secret
        self.max_seconds = max_seconds

    def _require(self) -> str:
        if not self._secret:
            raise FailedPrecondition(
                "sharing is off: the orchestrator has no share_secret_key "
                "(STAGEFLOW_SHARE_SECRET_KEY)"
            )
        return self._secret

    def sign(self, job_id: str, version: int, expires_in: int, now: float | None = None) -> Shared:
        self._require()
        if not 0 <= expires_in <= self.max_seconds:
            raise InvalidArgument(
                "expires_in_seconds",
                f"must be in [1, {self.max_seconds}] (0: the maximum), got {expires_in}",
            )
        expires = int(now if now is not None else time.time()) + (expires_in or self.max_seconds)
        return Shared(job_id, version, expires)

    def token(self, shared: Shared) -> str:
        sig = _signature(self._require(), shared.job_id, shared.version, shared.expires)
        return f"{shared.job_id}/{shared.version}/{shared.expires}/{sig}"

    def verify(self, token: str, now: float | None = None) -> Shared:
        secret = self._require()
        match = _TOKEN.match(token)
        if match is None:
            raise PermissionDenied("invalid share link")
        job_id, version, expires, sig = match.groups()
        expected = _signature(secret, job_id, int(version), int(expires))
        if not hmac.compare_digest(sig, expected):
            raise PermissionDenied("invalid share link")
        if int(expires) <= (now if now is not None else time.time()):
            raise OutOfRange("this share link has expired")
        return Shared(job_id, int(version), int(expires))
