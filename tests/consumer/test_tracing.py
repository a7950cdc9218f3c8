"""The consumer kit continues the relay's trace: a CONSUMER span whose parent is the record's `traceparent`
header and which links to the CloudEvent's creation context. Bad context is ignored, never raised."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from relay import envelope, schemas
from relay.consumer import Event, TraceParent, parse_event, parse_traceparent, process_span
from relay.tracing import valid_traceparent
from tests.consumer.test_consumer import record_of
from tests.vectors import VECTORS

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
HOP = 0x00F067AA0BA902B7  # the relay span the record was made under (header)
CREATION = 0x53995C3F42CD8AD8  # the span of the webhook's request (CloudEvent attribute)
HOP_HEADER = f"00-{TRACE:032x}-{HOP:016x}-01"
CREATION_VALUE = f"00-{TRACE:032x}-{CREATION:016x}-01"
ZERO_TRACE = f"00-{0:032x}-{HOP:016x}-01"
ZERO_SPAN = f"00-{TRACE:032x}-{0:016x}-01"


@dataclass
class Record:
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    topic: str = "mytpe.transaction"
    partition: int = 2
    offset: int = 41


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced_record(header: bytes | None = HOP_HEADER.encode(), creation: Any = CREATION_VALUE) -> tuple[Record, Event]:
    document = json.loads(record_of(VECTORS[0].body).value or b"")
    if creation is not None:
        document["traceparent"] = creation
    value = json.dumps(document).encode()
    headers: list[tuple[str, bytes | None]] = [("content-type", envelope.CONTENT_TYPE)]
    if header is not None:
        headers.append(("traceparent", header))
    return Record(value, headers), parse_event(value)


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_the_span_continues_the_header_and_links_to_the_creation_context(spans: Any) -> None:
    provider, exporter = spans
    record, event = traced_record()
    with process_span(record, event=event, group="ledger", tracer=provider.get_tracer("t")) as live:
        assert live is not None and live.is_recording()
    span = only_span(exporter)
    assert span.kind is SpanKind.CONSUMER and span.name == "process mytpe.transaction"
    assert span.context is not None and span.context.trace_id == TRACE
    assert span.parent is not None and (span.parent.trace_id, span.parent.span_id) == (TRACE, HOP)
    assert span.parent.is_remote
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [(TRACE, CREATION)]
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mytpe.transaction",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "ledger",
        "messaging.message.id": event.id,
        "cloudevents.event_id": event.id,
        "cloudevents.event_source": event.source,
        "cloudevents.event_type": "app.mytpe.pay.transaction.completed",
        "cloudevents.event_spec_version": "1.0",
        "cloudevents.event_subject": event.subject,
    }


def test_the_header_tracestate_travels_with_the_parent(spans: Any) -> None:
    provider, exporter = spans
    record, event = traced_record()
    record.headers.append(("tracestate", b"vendor=abc,\tother=1"))  # W3C's optional whitespace: a tab
    with process_span(record, event=event, tracer=provider.get_tracer("t")):
        pass
    parent = only_span(exporter).parent
    assert parent is not None and dict(parent.trace_state) == {"vendor": "abc", "other": "1"}


BAD_HEADERS = {
    "all-zero trace id": ZERO_TRACE.encode(),
    "all-zero parent id": ZERO_SPAN.encode(),
    "all zero": b"00-00000000000000000000000000000000-0000000000000000-00",
    "garbage": b"not a traceparent",
    "empty": b"",
    "null value": None,
    "not ascii": "00-" + "é" * 32 + f"-{HOP:016x}-01",
    "uppercase hex": HOP_HEADER.upper().encode(),
    "version ff": ("ff" + HOP_HEADER[2:]).encode(),
    "version 00 with more": (HOP_HEADER + "-00").encode(),
    "short trace id": HOP_HEADER[:-10].encode(),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_a_bad_header_makes_a_root_span_never_an_error(spans: Any, header: Any) -> None:
    provider, exporter = spans
    raw = header.encode("utf-8") if isinstance(header, str) else header
    record, event = traced_record(header=raw)
    if header is None:
        record.headers.append(("traceparent", None))
    with process_span(record, event=event, tracer=provider.get_tracer("t")):
        pass
    span = only_span(exporter)
    assert span.parent is None
    assert span.context is not None and span.context.trace_id not in (0,)
    assert [link.context.span_id for link in span.links] == [CREATION], "the creation link stands on its own"


def test_a_missing_header_or_two_of_them_make_a_root_span(spans: Any) -> None:
    provider, exporter = spans
    missing, event = traced_record(header=None)
    doubled, _ = traced_record()
    doubled.headers.append(("traceparent", f"00-{TRACE:032x}-{CREATION:016x}-01".encode()))
    for record in (missing, doubled):
        with process_span(record, event=event, tracer=provider.get_tracer("t")):
            pass
    assert [span.parent for span in exporter.get_finished_spans()] == [None, None]


@pytest.mark.parametrize("creation", [ZERO_TRACE, ZERO_SPAN, "garbage", 42, None, {"a": 1}])
def test_a_bad_creation_context_drops_the_link_only(spans: Any, creation: Any) -> None:
    provider, exporter = spans
    record, event = traced_record(creation=creation)
    assert event.traceparent == (creation if isinstance(creation, str) else None)
    with process_span(record, event=event, tracer=provider.get_tracer("t")):
        pass
    span = only_span(exporter)
    assert span.links == () or list(span.links) == []
    assert span.parent is not None and span.parent.span_id == HOP


def test_without_an_event_there_is_no_link_and_still_a_span(spans: Any) -> None:
    provider, exporter = spans
    record = Record(b"not an event", [("traceparent", HOP_HEADER.encode())], topic="mytpe.dlq")
    with process_span(record, tracer=provider.get_tracer("t")):
        pass
    span = only_span(exporter)
    assert span.name == "process mytpe.dlq" and not span.links
    assert span.parent is not None and span.parent.span_id == HOP
    assert "cloudevents.event_id" not in (span.attributes or {})


def test_a_failure_in_the_handler_is_recorded_by_its_type_only_and_raised(spans: Any) -> None:
    """A handler's exception may quote the payload (found by review: its message and stack trace were
    recorded on the span): the span says failed and the exception's type, nothing more."""
    provider, exporter = spans
    record, event = traced_record()
    with pytest.raises(KeyError), process_span(record, event=event, tracer=provider.get_tracer("t")):
        raise KeyError("card 4111111111111111")
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert "4111" not in str(span.status.description)
    assert span.events == ()
    assert (span.attributes or {})["error.type"] == "KeyError"


def test_tracestate_too_long_or_malformed_is_dropped(spans: Any) -> None:
    provider, exporter = spans
    record, event = traced_record()
    record.headers.append(("tracestate", ",".join(f"k{n}=v" for n in range(40)).encode()))
    record.headers.append(("tracestate", b"\xff\xfe"))
    with process_span(record, event=event, tracer=provider.get_tracer("t")):
        pass
    parent = only_span(exporter).parent
    assert parent is not None and parent.span_id == HOP and len(parent.trace_state) == 0


def test_a_tracestate_with_a_line_break_is_dropped_and_never_logged(
    spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: OpenTelemetry's parser logs a member it refuses verbatim, so a record's `tracestate` with a
    line break wrote a forged line (of any length) into the consumer's log."""
    provider, exporter = spans
    record, event = traced_record()
    record.headers.append(("tracestate", b"k=v\n2026-01-01 ERROR fake: forged line" + b"x" * 2000))
    with caplog.at_level(logging.DEBUG), process_span(record, event=event, tracer=provider.get_tracer("t")):
        pass
    parent = only_span(exporter).parent
    assert parent is not None and parent.span_id == HOP and len(parent.trace_state) == 0
    assert "forged" not in caplog.text


def test_without_opentelemetry_it_yields_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` now raises ImportError
    record, event = traced_record()
    with process_span(record, event=event) as span:
        assert span is None


def test_with_the_api_but_no_sdk_the_span_records_nothing() -> None:
    record, event = traced_record()
    with process_span(record, event=event, tracer=NoOpTracerProvider().get_tracer("t")) as span:
        assert span is not None and not span.is_recording()


def test_parse_traceparent_reads_the_w3c_fields() -> None:
    assert parse_traceparent(HOP_HEADER) == TraceParent(trace_id=TRACE, span_id=HOP, flags=1)
    assert parse_traceparent(f" {HOP_HEADER}\t".encode()) == TraceParent(trace_id=TRACE, span_id=HOP, flags=1)
    later = parse_traceparent("cc" + HOP_HEADER[2:-2] + "00-what-the-future-holds")
    assert later == TraceParent(trace_id=TRACE, span_id=HOP, flags=0) and not later.sampled
    assert parse_traceparent("cc" + HOP_HEADER[2:] + "x") is None
    assert TraceParent(trace_id=TRACE, span_id=HOP, flags=1).header() == HOP_HEADER
    assert all(parse_traceparent(bad) is None for bad in BAD_HEADERS.values())


@pytest.mark.parametrize(
    "headers",
    [42, "traceparent", [b"x"], [("traceparent",)], [(None, b"x")], [("traceparent", 7)]],
    ids=["int", "str", "bytes-items", "1-tuple", "none-key", "int-value"],
)
def test_headers_of_any_shape_never_raise(spans: Any, headers: Any) -> None:
    provider, exporter = spans
    record = Record(b"{}", headers)
    with process_span(record, tracer=provider.get_tracer("t")):
        pass
    assert only_span(exporter).parent is None


def test_headers_as_a_mapping_are_read_too(spans: Any) -> None:
    provider, exporter = spans
    record = Record(b"{}", {"traceparent": HOP_HEADER.encode()})  # type: ignore[arg-type]
    with process_span(record, tracer=provider.get_tracer("t")):
        pass
    parent = only_span(exporter).parent
    assert parent is not None and parent.span_id == HOP


@settings(max_examples=300, deadline=None)
@given(
    trace_id=st.one_of(st.just(0), st.integers(0, 2**128 - 1)),
    span_id=st.one_of(st.just(0), st.integers(0, 2**64 - 1)),
    flags=st.integers(0, 255),
)
def test_the_kit_the_relay_and_the_schema_agree_on_every_traceparent(trace_id: int, span_id: int, flags: int) -> None:
    """Three readers of one format: the relay's check (what it writes or passes on), the envelope schema's
    pattern (what the contract promises) and the consumer kit's parse (what a consumer continues)."""
    value = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    valid = trace_id != 0 and span_id != 0
    assert (valid_traceparent(value) is not None) is valid
    assert (re.fullmatch(SCHEMA_PATTERN, value) is not None) is valid
    parsed = parse_traceparent(value)
    assert parsed == (TraceParent(trace_id=trace_id, span_id=span_id, flags=flags) if valid else None)
    assert parsed is None or parsed.header() == value


SCHEMA_PATTERN = schemas.load(schemas.ENVELOPE)["definitions"]["traceparent"]["pattern"]
