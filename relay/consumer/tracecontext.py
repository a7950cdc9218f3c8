"""W3C Trace Context (https://www.w3.org/TR/trace-context/) as read from a Kafka record, with no dependency.

Reading is lenient and total: a malformed value, an all-zero trace or parent id, version `ff`, a value that is
not ASCII, or two `traceparent` headers on one record all mean "no context" (None), never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from relay.consumer import headers as record_headers

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
STATE_LENGTH = 512
"""The longest `tracestate` value passed on (W3C: a vendor must propagate at least 512 characters)."""
_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VERSION_00_LENGTH = 55
_SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)

    def header(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The context of a `traceparent` value, or None when there is none to continue."""
    text = record_headers.text(value)
    if text is None:
        return None
    text = text.strip(" \t")
    match = _FIELDS.match(text)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == "ff" or (version == "00" and len(text) != _VERSION_00_LENGTH):
        return None
    if len(text) > _VERSION_00_LENGTH and text[_VERSION_00_LENGTH] != "-":  # a later version may append fields
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id=trace_id, span_id=span_id, flags=int(flags_hex, 16))


def header_traceparent(headers: Iterable[tuple[str, bytes | None]] | None) -> TraceParent | None:
    """The context of a record's one `traceparent` header; none, or two of them, is no context."""
    values = record_headers.values(headers, TRACEPARENT)
    return parse_traceparent(values[0]) if len(values) == 1 else None


def header_tracestate(headers: Iterable[tuple[str, bytes | None]] | None) -> list[str]:
    """The record's `tracestate` values, in order (W3C allows the list to be split over several); a value that
    is not printable ASCII (a tab aside), or is longer than W3C's 512 characters, is left out (`usable_tracestate`)."""
    texts = (record_headers.text(value) for value in record_headers.values(headers, TRACESTATE))
    return [text for text in texts if usable_tracestate(text)]


def usable_tracestate(text: str | None) -> TypeGuard[str]:
    """Whether a `tracestate` value may be handed to OpenTelemetry's parser, which logs a member it refuses
    verbatim: printable ASCII or a tab (W3C's optional whitespace; no line break to forge a log line with), at
    most 512 characters."""
    return text is not None and len(text) <= STATE_LENGTH and all(" " <= char <= "~" or char == "\t" for char in text)
