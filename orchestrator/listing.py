"""ListJobs' pages: opaque page tokens over the stores' keyset cursors, and
the text filter.

A token is the `store.Cursor` of the last job a page consumed, so the next
page starts right after it in the newest-first order: jobs submitted
meanwhile are newer, and neither repeat nor shift what follows. It carries
no tenant: the tenant filter is the caller's own key, applied on every page,
so an altered token can only move within the caller's jobs.

The text filter (`query`) is applied here, over the composed prompt and the
overlay text, ignoring case, while reading the store's pages in batches:
at most MAX_SCANNED jobs are looked at per call, so a rare match costs a few
short pages rather than one unbounded scan.
"""

from __future__ import annotations

import base64
import binascii
import re

from stageflow.core.errors import InvalidArgument
from stageflow.orchestrator.store import Cursor
from stageflow.v1 import orchestrator_pb2

# Jobs a call with a query looks at, and per store read.
MAX_SCANNED = 2000
SCAN_BATCH = 200
_TOKEN = re.compile(r"v1\.(\d{1,20})\.(\d{1,20})")


def encode_token(cursor: Cursor) -> str:
    text = f"v1.{cursor[0]}.{cursor[1]}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str) -> Cursor | None:
    """The cursor a next_page_token names; None for "" (the first page)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        text = ""
    match = _TOKEN.fullmatch(text)
    if match is None:
        raise InvalidArgument(
            "page_token", "is not a next_page_token of ListJobs (leave it empty for the first page)"
        )
    return int(match[1]), int(match[2])


def needle(query: str) -> str:
    """The query as it is matched (case folded, outer spaces dropped)."""
    return query.strip().casefold()


def matches(job: orchestrator_pb2.Job, folded: str) -> bool:
    return folded in job.prompt.casefold() or folded in job.bundle.overlay_text.casefold()
