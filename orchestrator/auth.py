"""API keys and tenants: who is calling, checked once per call.

A key is ``sf_<key id>_<secret>``. The store keeps only the key id, the
tenant, a display prefix and HMAC-SHA256(server secret, key): a leaked
database gives no key, and without the server secret no guess can be
checked offline. A keyed hash (not argon2id) because every call verifies
one: a slow hash would cost each call milliseconds or need a cache, and a
cache would let a revoked key live on. Revocation is one UPDATE that the
next call sees.

`Authenticator.authenticate` turns a call's metadata into a `Principal`
(tenant and key id) or raises Unauthenticated; with authentication off it
returns None and the runner scopes nothing. The scoping itself is the
runner's (`JobRunner`, every path goes through it), not this module's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from stageflow.core.errors import InvalidArgument, Unauthenticated

KEY_PREFIX = "sf_"
_KEY = re.compile(r"^sf_([0-9a-f]{12})_([A-Za-z0-9_-]{32,})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Characters of a key shown by `keys list` (the "sf_" and the key id).
DISPLAY_CHARS = 3 + 12
MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class ApiKey:
    """A stored key: everything but the key itself."""

    key_id: str
    tenant: str
    prefix: str  # the first DISPLAY_CHARS characters of the key, for people
    key_hash: str  # hex HMAC-SHA256(server secret, key)
    created_at: int  # unix microseconds
    revoked_at: int = 0  # unix microseconds; 0 while the key is valid
    # The scheduling lane of the key's jobs: "bulk" makes them all bulk;
    # "" or "interactive" leaves the request's own choice.
    priority: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at != 0


@dataclass(frozen=True)
class Principal:
    """The caller of one authenticated call."""

    tenant: str
    key_id: str
    priority: str = ""


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidArgument(
            "tenant",
            f"must be 1-63 characters of a-z, 0-9, '.', '_', '-' starting with a letter "
            f"or digit, got {tenant!r}",
        )
    return tenant


def hash_key(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def check_secret(secret: str) -> str:
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidArgument(
            "auth_secret_key",
            f"must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`), "
            f"got {len(secret)}",
        )
    return secret


PRIORITIES = ("", "interactive", "bulk")


def new_key(tenant: str, secret: str, priority: str = "") -> tuple[str, ApiKey]:
    """A fresh key for `tenant` and the record to store; the key is shown once."""
    check_tenant(tenant)
    if priority not in PRIORITIES:
        raise InvalidArgument("priority", f"must be interactive or bulk, got {priority!r}")
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        key_id=key_id,
        tenant=tenant,
        prefix=key[:DISPLAY_CHARS],
        key_hash=hash_key(secret, key),
        created_at=time.time_ns() // 1000,
        priority=priority,
    )
    return key, record


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The key of an ``authorization: Bearer KEY`` entry; "" when there is none."""
    for name, value in metadata:
        if name.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, key = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise Unauthenticated("authorization must be 'Bearer <API key>'")
            return key.strip()
    return ""


class KeyLookup(Protocol):
    """What authentication reads from the job store (`store.JobStore.get_key`)."""

    async def get_key(self, key_id: str) -> ApiKey | None: ...


class Authenticator:
    """Checks a call's key against the store; `enabled=False` lets every call through."""

    def __init__(self, keys: KeyLookup, secret: str, *, enabled: bool) -> None:
        self._keys = keys
        self._secret = check_secret(secret) if enabled else secret
        self.enabled = enabled

    async def authenticate(self, key: str) -> Principal | None:
        """The key's principal; None with authentication off. Raises
        Unauthenticated for a missing, malformed, unknown or revoked key, with
        one message for all of them but "missing" (never hinting which)."""
        if not self.enabled:
            return None
        if not key:
            raise Unauthenticated("an API key is required: authorization: Bearer <API key>")
        match = _KEY.match(key)
        record = await self._keys.get_key(match.group(1)) if match else None
        if (
            record is None
            or record.revoked
            or not hmac.compare_digest(record.key_hash, hash_key(self._secret, key))
        ):
            raise Unauthenticated("invalid or revoked API key")
        return Principal(tenant=record.tenant, key_id=record.key_id, priority=record.priority)
