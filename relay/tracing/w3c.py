"""The W3C Trace Context `traceparent` value, checked as text (no OpenTelemetry needed)."""

from __future__ import annotations

import re

_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str | bytes | None) -> str | None:
    """`value` when it is a version-00 `traceparent` with non-zero ids, else None (never an all-zero one)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if value is not None and _TRACEPARENT.fullmatch(value) else None
