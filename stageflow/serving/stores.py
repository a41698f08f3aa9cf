"""Object stores with metrics and spans: what every serving process opens.

`stageflow.core.storage` holds the stores themselves (no metrics, no tracing,
so the model layer may use them); this wraps one for a process that reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

from stageflow.core.storage import DEFAULT_S3_RETRY_SECONDS, ObjectStore
from stageflow.core.storage import open_store as open_plain_store
from stageflow.serving import metrics, tracing


def open_store(
    url: str,
    *,
    access_key: str = "",
    secret_key: str = "",
    region: str = "",
    retry_seconds: float = DEFAULT_S3_RETRY_SECONDS,
) -> InstrumentedStore:
    """`stageflow.core.storage.open_store`, instrumented (see `InstrumentedStore`)."""
    return InstrumentedStore(
        open_plain_store(
            url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            retry_seconds=retry_seconds,
        )
    )


class InstrumentedStore(ObjectStore):
    """Decorates a store with metrics (bytes and latency per operation) and,
    for reads and writes, a span; `inner` is the store doing the work."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    @contextmanager
    def _observe(self, operation: str, key: str, *, span: bool = False) -> Iterator[None]:
        start = time.perf_counter()
        outcome = "error"
        scope = (
            tracing.tracer.start_as_current_span(
                f"store.{operation}", attributes={"stageflow.store.key": key}
            )
            if span
            else nullcontext()
        )
        try:
            with scope:
                yield
            outcome = "ok"
        finally:
            metrics.STORE_DURATION.labels(operation, outcome).observe(time.perf_counter() - start)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._observe("put", key, span=True):
            self.inner.put(key, data, content_type=content_type)
        metrics.STORE_BYTES.labels("put").inc(len(data))

    def get(self, key: str) -> bytes:
        with self._observe("get", key, span=True):
            data = self.inner.get(key)
        metrics.STORE_BYTES.labels("get").inc(len(data))
        return data

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        with self._observe("put", key, span=True):
            self.inner.put_file(key, path, content_type=content_type)
        metrics.STORE_BYTES.labels("put").inc(Path(path).stat().st_size)

    def get_file(self, key: str, path: Path) -> None:
        with self._observe("get", key, span=True):
            self.inner.get_file(key, path)
        metrics.STORE_BYTES.labels("get").inc(Path(path).stat().st_size)

    def exists(self, key: str) -> bool:
        with self._observe("exists", key):
            return self.inner.exists(key)

    def delete(self, key: str) -> None:
        with self._observe("delete", key):
            self.inner.delete(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        with self._observe("list", prefix):
            return self.inner.list_keys(prefix)

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self.inner.url(key, expires)

    def describe(self) -> str:
        return self.inner.describe()
