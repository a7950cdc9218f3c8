"""The relay's OTLP encoding (relay/tracing/otlp.py) against the SDK's: the same bytes for the relay's own spans
and for any span the SDK can make, and the exporter sending them over real OTLP/HTTP."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import trace_exporter as sdk_exporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import AttributeValue
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.tracing import TracingConfig, otlp
from relay.tracing.otel import Tracer
from relay.tracing.otlp import Exporter, encode
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers
from tests.otlp_receiver import otlp_receiver

NOW = 1775745000


def refuse(batch: Sequence[ReadableSpan]) -> bytes:
    raise ValueError("cannot")


def sdk(spans: Sequence[ReadableSpan]) -> bytes:
    made: bytes = encode_spans(spans).SerializePartialToString()
    return made


@pytest.fixture
def kept() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.shutdown()


def provider(kept: InMemorySpanExporter, **kwargs: Any) -> TracerProvider:
    made = TracerProvider(**kwargs)
    made.add_span_processor(SimpleSpanProcessor(kept))
    return made


def test_the_relays_spans_of_accepted_refused_and_duplicate_webhooks_encode_to_the_sdks_bytes(
    settings_factory: Callable[..., Settings], kept: InMemorySpanExporter
) -> None:
    tracer = Tracer.build(TracingConfig(), SimpleSpanProcessor(kept))
    app = create_app(settings_factory(), publisher=FakePublisher(), clock=lambda: float(NOW), tracer=tracer)
    with TestClient(app) as client:
        body, delivery_id = sample()
        headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
        answers = [client.post("/webhooks/mytpe", content=body, headers=headers).status_code for _ in range(2)]
        forged = signed_headers(body, timestamp=NOW, delivery_id="other", secret="whsec_not_the_secret")
        answers.append(client.post("/webhooks/mytpe", content=body, headers=forged).status_code)
    assert answers == [200, 200, 401]
    spans = kept.get_finished_spans()
    assert {"verify", "dedupe claim", "dedupe commit"} <= {span.name for span in spans}
    assert any(span.status.status_code is StatusCode.ERROR for span in spans)  # the refused request's
    assert encode(spans) == sdk(spans)
    tracer.shutdown()


def test_links_events_remote_parents_statuses_limits_and_several_resources_and_scopes(
    kept: InMemorySpanExporter,
) -> None:
    one = provider(kept, resource=Resource.create({"service.name": "one"}, schema_url="https://example.com/s/1"))
    two = provider(kept, resource=Resource.create({"service.name": "two", "replica": 3}))
    limited = provider(kept, span_limits=SpanLimits(max_attributes=2, max_events=1, max_links=1))
    state = TraceState([("mytpe", "a1"), ("other", "b2")])
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    local = SpanContext(0x123, 0x456, is_remote=False, trace_flags=TraceFlags(0))
    scoped = one.get_tracer("relay", "1.2.3", schema_url="https://example.com/scope", attributes={"a": "b"})
    with scoped.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_status(Status(StatusCode.ERROR, "refused"))
        with scoped.start_as_current_span("child", attributes={"empty": "", "zero": 0, "no": False}):
            pass
    under_remote = trace.set_span_in_context(NonRecordingSpan(remote))
    two.get_tracer("other").start_span("remote child", under_remote, SpanKind.CONSUMER).end()
    one.get_tracer("").start_span("unnamed scope", links=[Link(remote, {"k": "v"}), Link(local)]).end()
    with one.get_tracer("relay", "1.2.3").start_as_current_span("events", kind=SpanKind.PRODUCER) as span:
        span.add_event("sent", {"n": 1, "ratio": 0.5, "tags": ("a", "b"), "ints": (1, 2)})
        span.record_exception(ValueError("x"))
        span.set_status(Status(StatusCode.OK))
    # A resource and scopes that are objects of their own, equal to `one`'s by value: the SDK makes one group of
    # them, and so must `encode`
    twin = provider(kept, resource=Resource.create({"service.name": "one"}, schema_url="https://example.com/s/1"))
    assert twin.resource is not one.resource and twin.resource == one.resource
    for index, each in enumerate((one, twin)):
        each.get_tracer("again", "1").start_span(f"again {index}").end()
        two.get_tracer("between").start_span(f"between {index}").end()
    limited.get_tracer("limited").start_span(
        "dropped", kind=SpanKind.CLIENT, attributes={"a": 1, "b": 2, "c": 3}, links=[Link(local), Link(remote)]
    ).end()
    spans = kept.get_finished_spans()
    assert len(spans) == 10
    assert encode(spans) == sdk(spans)
    assert encode(list(reversed(spans))) == sdk(list(reversed(spans)))  # groups in the order they first appear


texts = st.text(st.characters(exclude_categories=()), max_size=8)  # lone surrogates too, which protobuf refuses
values = st.one_of(
    texts,
    st.booleans(),
    st.integers(),  # beyond 64 bits too, which protobuf refuses
    st.floats(allow_nan=False),
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(texts.filter(bool), values, max_size=6), min_size=1, max_size=4))
def test_any_attributes_the_sdk_keeps_encode_to_the_sdks_bytes(attributes: list[dict[str, Any]]) -> None:
    memory = InMemorySpanExporter()
    tracer = provider(memory).get_tracer("property")
    for index, each in enumerate(attributes):
        tracer.start_span(f"span {index}", attributes=each).end()
    spans = memory.get_finished_spans()
    assert encode(spans) == sdk(spans)


def test_an_attribute_protobuf_refuses_is_skipped_as_the_sdk_skips_it_and_the_others_kept(
    kept: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    refused: dict[str, AttributeValue] = {
        "big": 2**63,
        "small": -(2**63) - 1,
        "surrogate": "\ud800",
        "\udfff": "key",
        "kept": "yes",
    }
    provider(kept).get_tracer("relay").start_span("refused", attributes=refused).end()
    spans = kept.get_finished_spans()
    assert len(spans[0].attributes or {}) == 5  # the SDK keeps them on the span; its encoder skips four
    with caplog.at_level(logging.WARNING, logger=otlp.logger.name):
        assert encode(spans) == sdk(spans)
    ours = [record for record in caplog.records if record.name == otlp.logger.name]
    assert len(ours) == 4
    assert all("not encoded" in record.getMessage() and not record.exc_info for record in ours)
    assert not any(str(2**63) in record.getMessage() for record in ours)  # the value is never logged


def test_spans_whose_resource_is_made_anew_on_each_read_are_grouped_as_the_sdk_groups_them() -> None:
    class Fresh(ReadableSpan):
        def __init__(self, name: str, service: str, span_id: int) -> None:
            super().__init__(name, context=SpanContext(1, span_id, is_remote=False))
            self.service = service

        @property
        def resource(self) -> Resource:
            return Resource({"service.name": self.service})

    spans = [Fresh("a1", "A", 1), Fresh("a2", "A", 2), Fresh("b1", "B", 3), Fresh("b2", "B", 4)]
    assert encode(spans) == sdk(spans)


def test_the_exporter_sends_its_own_encoding_over_real_otlp_http(kept: InMemorySpanExporter) -> None:
    tracer = provider(kept).get_tracer("relay")
    for name in ("a", "b", "c"):
        tracer.start_span(name, attributes={"mytpe.outcome": "accepted"}).end()
    spans = kept.get_finished_spans()
    expected = sdk(spans)
    with otlp_receiver() as receiver:
        exporter = Exporter(f"{receiver.endpoint}/v1/traces", timeout=10)  # the SDK's arguments, positional too
        assert exporter.own  # the SDK exporter's state it sends with is there, at the pinned version
        with pytest.MonkeyPatch.context() as patch:  # so the bytes sent cannot be the SDK encoder's
            patch.setattr(sdk_exporter, "encode_spans", refuse)
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert receiver.bodies == [expected]
        assert [span.name for span in receiver.spans] == ["a", "b", "c"]
        missing = Exporter(endpoint=f"{receiver.endpoint}/v1/elsewhere", timeout=10)  # answered 404
        assert missing.export(spans) is SpanExportResult.FAILURE
        exporter.shutdown()  # type: ignore[no-untyped-call]
        assert exporter.export(spans) is SpanExportResult.FAILURE  # the SDK's path: shut down
    assert len(receiver.bodies) == 1


def test_without_the_sdk_state_it_sends_with_the_exporter_is_the_sdks(kept: InMemorySpanExporter) -> None:
    provider(kept).get_tracer("relay").start_span("a").end()
    spans = kept.get_finished_spans()
    with otlp_receiver() as receiver, pytest.MonkeyPatch.context() as patch:
        patch.setattr(OTLPSpanExporter, "__init__", lambda self, *args, **kwargs: None)  # none of its state made
        patch.setattr(OTLPSpanExporter, "export", lambda self, batch: SpanExportResult.FAILURE)
        exporter = Exporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=10)
        assert not exporter.own
        assert exporter.export(spans) is SpanExportResult.FAILURE  # the SDK's `export`, not the relay's
    assert receiver.bodies == []


def test_a_batch_the_encoding_refuses_goes_through_the_sdks_export_outside_the_error(
    kept: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    provider(kept).get_tracer("relay").start_span("a").end()
    spans = kept.get_finished_spans()
    handling: list[object] = []
    export = OTLPSpanExporter.export

    def watched(self: OTLPSpanExporter, batch: Sequence[ReadableSpan]) -> SpanExportResult:
        handling.append(sys.exc_info()[1])  # an error being handled would chain into the SDK's own log lines
        return export(self, batch)

    monkeypatch.setattr(OTLPSpanExporter, "export", watched)
    with otlp_receiver() as receiver, caplog.at_level(logging.WARNING, logger=otlp.logger.name):
        monkeypatch.setattr(otlp, "encode", refuse)
        exporter = Exporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=10)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert handling == [None, None]
        small = Exporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=10, max_request_size=10)
        assert small.export(spans) is SpanExportResult.FAILURE  # too large: dropped by the SDK's path
        monkeypatch.setattr(otlp, "encode", encode)
        assert small.export(spans) is SpanExportResult.FAILURE
    assert receiver.bodies == [sdk(spans)] * 2
    lines = [record.getMessage() for record in caplog.records if record.name == otlp.logger.name]
    assert (
        lines
        == [
            "tracing: the relay's OTLP encoding failed (ValueError): a batch it fails on goes through the SDK's encoder"
            " (logged once per exporter)"
        ]
        * 2
    )  # two exporters, one failing twice
