"""Object storage: the only way images move between services.

`ObjectStore` is a small synchronous interface with two implementations:
`LocalStore` (a folder; the embedded default) and `S3Store` (the minio client:
MinIO, SeaweedFS, AWS S3). Call it from async code through asyncio.to_thread.
Content addressing and digest checks live in `serving.artifacts`.
"""

from __future__ import annotations

import abc
from datetime import timedelta


class ObjectStore(abc.ABC):
    """Keys are '/'-separated relative paths without '..' segments."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write an object atomically (readers never see a partial object)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read an object; raise serving.errors.NotFound when it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL a client can fetch the object from: presigned GET on S3,
        file:// for a local folder."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this store points, for logs (never includes secrets)."""


def open_store(url: str, *, access_key: str = "", secret_key: str = "", region: str = "") -> ObjectStore:
    """Open a store from a URL.

    - ``file:///abs/path`` or a plain path: LocalStore rooted there.
    - ``s3://bucket?endpoint=http://host:port`` (or ``https://``): S3Store; the
      bucket is created when missing. Credentials come from the arguments.
    """
    raise NotImplementedError  # implemented below by the storage module owner
