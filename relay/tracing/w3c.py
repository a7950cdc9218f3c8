"""The W3C Trace Context `traceparent` and `tracestate` values, checked as text (no OpenTelemetry needed)."""

from __future__ import annotations

import re

HOP_HEADERS = ("traceparent", "tracestate")
"""A record's trace context for this hop (the Kafka headers): a spool drain sends its own in place of the one a
record was spooled with, so the spool's recovery check leaves them out when it looks for a record in Kafka."""
CREATED_HEADER = "mytpe-relay-created-traceparent"
"""On a DLQ record written with tracing on: the W3C context its webhook came in (the span that quarantined
it: the request's, a re-verification's, or a replay's from a file). Set once; a spool drain or a replay never
rewrites it (unlike `traceparent`, each hop's), and `replay --from-dlq` gives it to the rebuilt CloudEvent as
its `traceparent` (its creation context). A spooled family record the drain moves to the DLQ gets its
CloudEvent's `traceparent`."""
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\t -~]{1,512}")  # W3C's optional whitespace includes a tab


def valid_traceparent(value: str | bytes | None) -> str | None:
    """`value` when it is a version-00 `traceparent` with non-zero ids, else None (never an all-zero one)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if value is not None and _TRACEPARENT.fullmatch(value) else None


def valid_tracestate(value: str | bytes | None) -> str | None:
    """`value` when it may be handed to OpenTelemetry's parser, which logs a member it refuses verbatim:
    printable ASCII or a tab (no line break to forge a log line with), 1 to 512 characters (W3C's least a vendor must
    pass on). Else None. The consumer kit screens the same way (relay.consumer imports nothing of relay)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if value is not None and _TRACESTATE.fullmatch(value) else None
