"""The S3 store retries by time, not by count, and says why without a repr.
(No S3 server here: a refused port is the outage.)"""

from __future__ import annotations

import socket
import time

import pytest

from stageflow.core.errors import Unavailable
from stageflow.core.storage import S3Store


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


@pytest.mark.parametrize("seconds", [1.0])
def test_an_unreachable_server_is_retried_for_the_time_given(seconds: float) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        S3Store(
            f"http://127.0.0.1:{refused_port()}",
            "bucket",
            access_key="a",
            secret_key="s",
            region="us-east-1",
            retry_seconds=seconds,
        )
    took = time.monotonic() - started
    assert seconds <= took < seconds + 2.5  # the last backoff is at most 2 s
    message = caught.value.message
    assert message.startswith("object store http://127.0.0.1:")
    assert "refused" in message.lower()
    assert "0x" not in message and "object at" not in message, message
