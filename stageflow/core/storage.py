"""Object storage: the only way images move between services.

`ObjectStore` is a small synchronous interface with two implementations:
`LocalStore` (a folder; the embedded default) and `S3Store` (the minio client:
MinIO, SeaweedFS, AWS S3). Call it from async code through asyncio.to_thread.
Content addressing and digest checks live in `stageflow.core.artifacts`.
"""

from __future__ import annotations

import abc
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from urllib.request import url2pathname

import urllib3
from minio import Minio
from minio.error import S3Error

from stageflow.core.errors import InvalidArgument, NotFound, StageflowError, Unavailable
from stageflow.core.limits import quote


class ObjectStore(abc.ABC):
    """Keys are '/'-separated relative paths without '..' segments."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write an object atomically (readers never see a partial object)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read an object; raise stageflow.core.errors.NotFound when it does not exist."""

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

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix` (a plain string prefix, as in S3),
        sorted; "a/" lists everything below the folder a."""

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        """Write an object from a file; stores override this to stream large files."""
        self.put(key, Path(path).read_bytes(), content_type=content_type)

    def get_file(self, key: str, path: Path) -> None:
        """Read an object into a file (replaced atomically); NotFound as `get`."""
        _write_atomically(Path(path), self.get(key))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: os.replace is atomic on one
    # filesystem, so a concurrent reader sees the old or the new object.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_partial(name: str) -> bool:
    """A LocalStore write in progress (see _write_atomically)."""
    return name.startswith(".") and name.endswith(".tmp")


def check_key(key: str, *, field: str = "key") -> str:
    """Reject keys that could escape a store's root or alias another key."""
    if not key:
        raise InvalidArgument(field, "must not be empty")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidArgument(field, f"must be a relative '/'-separated path, got {quote(key)}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(
            field, f"must not contain empty, '.' or '..' segments, got {quote(key)}"
        )
    return key


class LocalStore(ObjectStore):
    """A folder; each key is a file below `root`. Content types are not kept,
    and `url()` ignores `expires` (file:// URLs do not expire)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        _write_atomically(self._path(key), data)

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(f"object {key} not found in {self.describe()}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list_keys(self, prefix: str = "") -> list[str]:
        # Walk only the deepest folder the prefix names, then filter by the rest.
        folder, _, _ = prefix.rpartition("/")
        base = (
            self.root.joinpath(*check_key(folder, field="prefix").split("/"))
            if folder
            else self.root
        )
        if not base.is_dir():
            return []
        keys = (
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not _is_partial(p.name)
        )
        return sorted(k for k in keys if k.startswith(prefix))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key} not found in {self.describe()}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with suppress(IsADirectoryError, NotADirectoryError):
            self._path(key).unlink(missing_ok=True)

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return str(self.root)


# Keys S3 uses for "this object is not there" (HEAD answers carry no body, so
# minio reports those as ResourceNotFound/NoSuchKey depending on the call).
_MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NotFound"}


# What MinIO (and SeaweedFS) answer when no region is configured.
DEFAULT_S3_REGION = "us-east-1"

# How long an S3 request is retried while the server is unreachable or
# answers 5xx (a restart, a failover): a duration, not a number of attempts.
DEFAULT_S3_RETRY_SECONDS = 30.0


class _RetryFor(urllib3.Retry):
    """urllib3's Retry, limited by time instead of by count: a request is
    retried (backoff doubling up to 2 s) until `seconds` have passed since its
    first failure."""

    def __init__(
        self,
        *args: Any,
        seconds: float = DEFAULT_S3_RETRY_SECONDS,
        since: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = seconds
        self.since = since

    def new(self, **kwargs: Any) -> _RetryFor:
        # Called by increment() on each failure: the first one starts the clock.
        kwargs.setdefault("seconds", self.seconds)
        kwargs.setdefault("since", time.monotonic() if self.since is None else self.since)
        return super().new(**kwargs)

    def is_exhausted(self) -> bool:
        spent = self.since is not None and time.monotonic() - self.since >= self.seconds
        return spent or super().is_exhausted()


def s3_retry(seconds: float) -> urllib3.Retry:
    """The retry of every S3 request: refused connections, timeouts and 5xx
    answers, for `seconds` from the first failure."""
    return _RetryFor(
        total=None,
        connect=None,
        read=None,
        status=None,
        other=0,
        backoff_factor=0.1,
        backoff_max=2.0,
        status_forcelist=[500, 502, 503, 504],
        seconds=seconds,
    )


_REPR = re.compile(r"<[^<>]* (object )?at 0x[0-9a-fA-F]+>(: )?")


def _unreachable_reason(err: BaseException) -> str:
    """Why a request failed, without the reprs urllib3 puts in its messages
    (`<urllib3.connection.HTTPConnection object at 0x7f...>`)."""
    reason = getattr(err, "reason", None) or err
    return _REPR.sub("", str(reason)).strip(" ()'\"") or type(err).__name__


def _endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """(host:port, secure) of ``host:port`` or ``http(s)://host:port``."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parts.scheme:
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"S3 endpoint must be http:// or https://, got {endpoint!r}")
        secure = parts.scheme == "https"
    if not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"S3 endpoint must be host:port, got {endpoint!r}")
    return parts.netloc, secure


class S3Store(ObjectStore):
    """A bucket on an S3 server, through the minio client.

    `endpoint` is ``host:port`` or ``http(s)://host:port``; a scheme, when
    given, decides `secure`. The bucket is created when it does not exist.

    `public_endpoint` (``http(s)://host:port``), when set, is where presigned
    URLs point: inside Kubernetes the store is ``http://minio:9000``, a name
    clients outside the cluster cannot reach. Presigning is local (no call to
    that address); the proxy in front of it must keep the Host header, which
    the signature covers.
    """

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        public_endpoint: str = "",
        retry_seconds: float = DEFAULT_S3_RETRY_SECONDS,
    ) -> None:
        netloc, secure = _endpoint(endpoint, secure)
        self.endpoint = f"{'https' if secure else 'http'}://{netloc}"
        self.bucket = bucket
        # A server restart is ridden out for `retry_seconds` (then UNAVAILABLE,
        # which the stage's callers retry in turn); a dead peer is not waited
        # on for minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            maxsize=10,
            retries=s3_retry(retry_seconds),
        )
        self._client = Minio(
            netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region or None,
            http_client=http,
        )
        self._signer = self._client
        if public_endpoint:
            public_netloc, public_secure = _endpoint(public_endpoint, False)
            # With a region given, minio presigns without asking the server:
            # the public address need not be reachable from here.
            self._signer = Minio(
                public_netloc,
                access_key=access_key,
                secret_key=secret_key,
                secure=public_secure,
                region=region or DEFAULT_S3_REGION,
            )
        with self._errors("bucket", bucket):
            if not self._client.bucket_exists(bucket):
                try:
                    self._client.make_bucket(bucket)
                except S3Error as err:
                    # Several processes may create it at once; ours lost the race.
                    if err.code != "BucketAlreadyOwnedByYou":
                        raise

    @contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        """Map client failures to domain errors that name the store."""
        try:
            yield
        except S3Error as e:
            if e.code == "NoSuchBucket":
                raise NotFound(f"bucket {self.bucket} not found at {self.endpoint}") from None
            if e.code in _MISSING:
                raise NotFound(f"{what} {key} not found in {self.describe()}") from None
            raise StageflowError(
                f"object store {self.describe()} refused {what} {key}: {e.code}: {e.message}"
            ) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Unavailable(
                f"object store {self.endpoint} unreachable: {_unreachable_reason(e)}"
            ) from e

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        with self._errors("object", key):
            self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._errors("object", key):
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            with self._errors("object", key):
                self._client.stat_object(self.bucket, key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        with self._errors("object", key):
            self._client.remove_object(self.bucket, key)

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        check_key(key)
        with self._errors("object", key):
            return str(self._signer.presigned_get_object(self.bucket, key, expires=expires))

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint}"

    def list_keys(self, prefix: str = "") -> list[str]:
        with self._errors("prefix", prefix):
            objects = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return sorted(o.object_name for o in objects if not o.is_dir)

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        check_key(key)
        with self._errors("object", key):
            # Streams from disk, multipart above the part size: model weights
            # run to gigabytes and need not fit in memory.
            self._client.fput_object(self.bucket, key, str(path), content_type=content_type)

    def get_file(self, key: str, path: Path) -> None:
        check_key(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors("object", key):
            # fget_object downloads to a side file and renames it into place.
            self._client.fget_object(self.bucket, key, str(path))


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store URL: the one grammar every store and the model repository read.

    - ``file:///abs/path`` or a plain path (relative to the working directory):
      a local folder, `folder`.
    - ``s3://bucket[/prefix]?endpoint=http(s)://host:port[&region=R][&public_endpoint=URL]``:
      a bucket on an S3 server, keys below `prefix` (no leading or trailing '/').
    """

    folder: Path | None = None
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    public_endpoint: str = ""

    @property
    def is_s3(self) -> bool:
        return self.folder is None


# S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots
# and hyphens, a letter or digit at each end), checked before any client is made.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def check_bucket(bucket: str) -> str | None:
    """What is wrong with an S3 bucket name, or None when it is valid."""
    if not _BUCKET.fullmatch(bucket):
        return (
            "must be 3-63 characters of lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if any(pair in bucket for pair in ("..", ".-", "-.")):
        return "must not hold '..', '.-' or '-.'"
    if _IPV4.fullmatch(bucket):
        return "must not be an IP address"
    return None


def parse_store_url(url: str, *, what: str = "store") -> StoreLocation:
    """Parse a store URL (see `StoreLocation`); ValueError names what is wrong."""
    if not url:
        raise ValueError(f"{what} URL is empty")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        query = parse_qs(parts.query)
        endpoint = query.get("endpoint", [""])[0]
        if not parts.netloc or not endpoint:
            raise ValueError(
                f"an S3 {what} URL is s3://bucket[/prefix]?endpoint=http://host:port, got {url!r}"
            )
        problem = check_bucket(parts.netloc)
        if problem is not None:
            raise ValueError(f"the bucket of {what} URL {url!r} {problem}, got {parts.netloc!r}")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_key(prefix, field=f"{what} prefix")
            except InvalidArgument as err:
                raise ValueError(f"{err.message} (in {url!r})") from None
        return StoreLocation(
            bucket=parts.netloc,
            prefix=prefix,
            endpoint=endpoint,
            region=query.get("region", [""])[0],
            public_endpoint=query.get("public_endpoint", [""])[0],
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"a file {what} URL is file:///absolute/path (or a plain path), got {url!r}"
            )
        return StoreLocation(folder=Path(url2pathname(parts.path)))
    if "://" in url:
        raise ValueError(f"unsupported {what} URL scheme {parts.scheme!r} in {url!r}")
    return StoreLocation(folder=Path(url))


def open_location(
    location: StoreLocation,
    *,
    access_key: str = "",
    secret_key: str = "",
    region: str = "",
    retry_seconds: float = DEFAULT_S3_RETRY_SECONDS,
) -> ObjectStore:
    """The store at `location`, its prefix not applied (see `open_store`)."""
    if location.folder is not None:
        return LocalStore(location.folder)
    return S3Store(
        location.endpoint,
        location.bucket,
        access_key=access_key,
        secret_key=secret_key,
        region=region or location.region or None,
        public_endpoint=location.public_endpoint,
        retry_seconds=retry_seconds,
    )


def open_store(
    url: str,
    *,
    access_key: str = "",
    secret_key: str = "",
    region: str = "",
    retry_seconds: float = DEFAULT_S3_RETRY_SECONDS,
) -> ObjectStore:
    """Open the store a URL names (`parse_store_url`); an S3 prefix scopes every key.

    Local folders are created on first write; an S3 bucket is created when
    missing. Credentials come from the arguments, never from the URL.
    ``&public_endpoint=https://host`` makes presigned URLs point there (the
    address clients outside the cluster use). An S3 request is retried for
    `retry_seconds` while the server is unreachable or answers 5xx.
    """
    location = parse_store_url(url)
    store = open_location(
        location,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        retry_seconds=retry_seconds,
    )
    return PrefixedStore(store, location.prefix) if location.prefix else store


class PrefixedStore(ObjectStore):
    """Every key of `inner` below ``prefix/``: what an ``s3://bucket/prefix`` URL opens."""

    def __init__(self, inner: ObjectStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = check_key(prefix.strip("/"), field="prefix") + "/"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.inner.put(self._key(key), data, content_type=content_type)

    def get(self, key: str) -> bytes:
        return self.inner.get(self._key(key))

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._key(key))

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self.inner.url(self._key(key), expires)

    def describe(self) -> str:
        return f"{self.inner.describe()}/{self.prefix.rstrip('/')}"

    def list_keys(self, prefix: str = "") -> list[str]:
        found = self.inner.list_keys(self.prefix + prefix)
        return [key[len(self.prefix) :] for key in found]

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        self.inner.put_file(self._key(key), path, content_type=content_type)

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(self._key(key), path)
