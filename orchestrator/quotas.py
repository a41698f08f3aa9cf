"""Per-tenant quotas and rate limits, enforced at submit in the job layer.

A tenant's `Quota` (its row in the job database, set by `stageflow keys
create --quota`, else the orchestrator's `default_quota`) bounds three
things: jobs RUNNING at once (later ones wait QUEUED for one of the tenant's
slots), jobs QUEUED (a submit past it is refused), and submissions in the
last 60 seconds (a sliding window over the jobs' `created_at`). The counts
come from the job database, the state every gateway replica's calls end up
in, so the limits hold across replicas. A refused submit is
RESOURCE_EXHAUSTED with a RetryInfo delay (HTTP 429 with Retry-After).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stageflow.core.errors import InvalidArgument, ResourceExhausted

WINDOW_SECONDS = 60.0
# When a queue frees is unknown: the delay suggested for a full queue.
QUEUED_RETRY_SECONDS = 5.0
_NAMES = {"running": "max_running", "queued": "max_queued", "per_minute": "per_minute"}


@dataclass(frozen=True)
class Quota:
    """None: no limit."""

    max_running: int | None = None
    max_queued: int | None = None
    per_minute: int | None = None

    def text(self) -> str:
        parts = [
            f"{short}={getattr(self, name)}"
            for short, name in _NAMES.items()
            if getattr(self, name) is not None
        ]
        return ",".join(parts)


@dataclass(frozen=True)
class TenantUsage:
    queued: int
    running: int
    # created_at (unix seconds) of the tenant's jobs submitted in the window, oldest first
    recent: tuple[float, ...]


def parse_quota(text: str, field: str = "quota") -> Quota:
    """ "running=2,queued=10,per_minute=30" (any subset; empty: no limits)."""
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in _NAMES:
            raise InvalidArgument(
                field, f"expected running=N,queued=N,per_minute=N (any of them), got {part!r}"
            )
        try:
            number = int(value)
        except ValueError:
            raise InvalidArgument(field, f"{name}: must be an integer, got {value!r}") from None
        if number < 1:
            raise InvalidArgument(field, f"{name}: must be at least 1, got {number}")
        values[_NAMES[name.strip()]] = number
    return Quota(**values)


def check_submit(quota: Quota, usage: TenantUsage, now: float) -> None:
    """Raise ResourceExhausted (with when to retry) when one more job would
    exceed the tenant's queued or per-minute limit."""
    if quota.per_minute is not None:
        window = [t for t in usage.recent if t > now - WINDOW_SECONDS]
        if len(window) >= quota.per_minute:
            # The oldest submission counted leaves the window first.
            oldest = window[len(window) - quota.per_minute]
            wait = max(1.0, math.ceil(oldest + WINDOW_SECONDS - now))
            raise ResourceExhausted(
                f"rate limit: at most {quota.per_minute} submissions per minute for this "
                f"tenant; retry in {wait:.0f} s",
                retry_after_seconds=wait,
            )
    if quota.max_queued is not None and usage.queued >= quota.max_queued:
        raise ResourceExhausted(
            f"quota: at most {quota.max_queued} queued jobs for this tenant "
            f"({usage.running} running); retry when some have started",
            retry_after_seconds=QUEUED_RETRY_SECONDS,
        )
