"""The sign-in cookie's value: an API key and its expiry, sealed with AES-GCM.

Sealed, not only signed: the key is a bearer secret, and a cookie ends up in
places (a proxy's log, a HAR file) a key should not. Opening checks the tag
(an altered byte is no session) and the expiry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import Request

from stageflow.core.logging import get_logger
from stageflow.gateway.settings import GatewaySettings

COOKIE = "stageflow_session"
_AAD = b"stageflow-workspace-session-v1"
_NONCE_BYTES = 12


class SessionCodec:
    """Seals an API key and its expiry into a cookie value, and opens it again.

    The AES-256 key is derived from `secret` (or random when it is empty: the
    sessions then end with the process)."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        raw = secret.encode() if secret else secrets.token_bytes(32)
        self._aead = AESGCM(hashlib.sha256(_AAD + b"\0" + raw).digest())
        self.max_age_s = max_age_s

    def seal(self, api_key: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.max_age_s)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = json.dumps({"k": api_key, "e": expires}, separators=(",", ":")).encode()
        sealed = nonce + self._aead.encrypt(nonce, body, _AAD)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, value: str | None, now: float | None = None) -> str | None:
        """The key sealed in `value`; None for no cookie, an altered or an expired one."""
        if not value or len(value) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            body = json.loads(
                self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _AAD)
            )
            key, expires = str(body["k"]), int(body["e"])
        except (ValueError, InvalidTag, KeyError, TypeError):
            return None
        return key if (time.time() if now is None else now) < expires else None


def make_codec(settings: GatewaySettings) -> SessionCodec:
    secret = settings.session_secret_key.get_secret_value()
    if not secret:
        get_logger(__name__).warning(
            "workspace.session_secret_random",
            detail="no session_secret_key (STAGEFLOW_SESSION_SECRET_KEY): workspace sign-ins "
            "end when this process restarts, and do not carry over to other replicas",
        )
    return SessionCodec(secret, settings.session_max_age_seconds)


def codec(request: Request) -> SessionCodec:
    """The app's codec (built once at start-up, `make_codec`)."""
    sessions: SessionCodec = request.app.state.sessions
    return sessions


def current_key(request: Request) -> str | None:
    """The key of the request's sign-in cookie; None without a valid one."""
    return codec(request).open(request.cookies.get(COOKIE))
