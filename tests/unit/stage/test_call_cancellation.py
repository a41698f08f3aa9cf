"""What a stopped model call reports: the caller's deadline or the caller leaving."""

from __future__ import annotations

import time

import pytest

from stageflow.core.errors import Cancelled, DeadlineExceeded
from stageflow.stage.dataplane import CallCancellation


def test_stopped_by_the_deadline_is_deadline_exceeded() -> None:
    """The stage's clock can see the deadline pass before the caller's does;
    the status must still be DEADLINE_EXCEEDED, not CANCELLED."""
    cancellation = CallCancellation(0.01)
    time.sleep(0.02)
    assert cancellation()
    with pytest.raises(DeadlineExceeded, match="cancelled at step 3 of 9"):
        cancellation.reraise(Cancelled("cancelled at step 3 of 9"))


def test_stopped_because_the_caller_left_stays_cancelled() -> None:
    cancellation = CallCancellation(None)
    cancellation.set()
    assert cancellation()
    with pytest.raises(Cancelled) as err:
        cancellation.reraise(Cancelled("cancelled at step 3 of 9"))
    assert not isinstance(err.value, DeadlineExceeded)
