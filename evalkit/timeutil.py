"""evalkit's one timestamp format: UTC to the second, ISO 8601 with a Z (what every *_utc field of the run
directory holds)."""

from __future__ import annotations

import time

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> str:
    """Now, e.g. "2026-11-29T14:03:07Z"."""
    return time.strftime(UTC_FORMAT, time.gmtime())


def utc_stamp(seconds: float) -> str:
    """`seconds` since the epoch (time.time(), a file's mtime) in the same format."""
    return time.strftime(UTC_FORMAT, time.gmtime(seconds))
