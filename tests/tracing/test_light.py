"""The relay's own sampled spans (relay/tracing/light.py): what the processors and exporters read of them is
what they read of the SDK's spans, and what they do not do is what the module says."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from relay.tracing import TracingConfig
from relay.tracing.light import LightSpan
from relay.tracing.otel import Tracer
from relay.tracing.otlp import encode

ROUTE = "/webhooks/mytpe"


def _tracer() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(exporter)), exporter


def _request_tree(tracer: Tracer) -> None:
    with tracer.request(ROUTE, ROUTE):
        tracer.annotate({"mytpe.source": "shop"})
        with tracer.child("verify"):
            pass
        send = tracer.send("mytpe.transaction", "d-1")
        assert send is not None
        send.end()
        tracer.answered("accepted", 200, "shop", "d-1")


def test_the_request_path_spans_read_as_the_sdks_would() -> None:
    """The same tree made by the SDK's tracer (a root under the same provider, children by context) gives the
    same names, kinds, flags, trace states, scope, resource and attribute keys; the relay's are LightSpans."""
    tracer, exporter = _tracer()
    _request_tree(tracer)
    light = sorted(exporter.get_finished_spans(), key=lambda span: span.name)
    assert all(isinstance(span, LightSpan) for span in light)
    exporter.clear()
    with tracer.root(f"POST {ROUTE}", {"http.request.method": "POST"}) as root:
        sdk_child = tracer._tracer.start_span("verify")  # the SDK's tracer the relay holds, for its own scope
        sdk_child.end()
        assert not isinstance(root, LightSpan) and not isinstance(sdk_child, LightSpan)
    sdk = {span.name: span for span in exporter.get_finished_spans()}
    for made in light:
        twin = sdk.get(made.name)
        if twin is None:
            continue
        assert made.context is not None and twin.context is not None
        assert made.context.trace_flags == twin.context.trace_flags, made.name
        assert made.context.trace_state == twin.context.trace_state
        assert made.resource == twin.resource
        assert made.instrumentation_scope == twin.instrumentation_scope
        assert made.start_time is not None and made.end_time is not None and made.start_time <= made.end_time
    request = next(span for span in light if span.parent is None)
    assert request.kind is SpanKind.SERVER and request.status.status_code is StatusCode.UNSET
    assert request.attributes is not None and request.attributes["mytpe.outcome"] == "accepted"
    assert encode(light)  # the relay's encoder reads them


def test_an_ended_span_takes_no_more_writes_and_ends_once() -> None:
    tracer, exporter = _tracer()
    with tracer.request(ROUTE, ROUTE) as span:
        assert span is not None
    assert isinstance(span, LightSpan) and not span.is_recording()
    span.set_attribute("late", 1)
    span.set_attributes({"later": 2})
    span.add_event("late")
    span.set_status(Status(StatusCode.ERROR))
    span.update_name("renamed")
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == f"POST {ROUTE}" and finished.attributes is not None
    assert "late" not in finished.attributes and "later" not in finished.attributes
    assert finished.events == () and finished.status.status_code is StatusCode.UNSET


def test_a_status_is_set_as_the_sdks_span_sets_it() -> None:
    """UNSET never replaces a status, OK is final, and a StatusCode with a description makes a Status."""
    tracer, _ = _tracer()
    with tracer.request(ROUTE, ROUTE) as span:
        assert isinstance(span, LightSpan)
        span.set_status(StatusCode.ERROR, "refused")
        assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "refused")
        span.set_status(Status(StatusCode.UNSET))
        assert span.status.status_code is StatusCode.ERROR
        span.set_status(StatusCode.OK)
        span.set_status(Status(StatusCode.ERROR))
        assert span.status.status_code.name == "OK"


def test_an_exception_is_recorded_by_its_type_only() -> None:
    """Never the message or the traceback: they may quote input."""
    tracer, exporter = _tracer()
    with tracer.request(ROUTE, ROUTE) as span:
        assert span is not None
        try:
            raise ValueError("secret=whsec_leak")
        except ValueError as error:
            span.record_exception(error, {"extra": "x"})
    (finished,) = exporter.get_finished_spans()
    (event,) = finished.events
    assert event.name == "exception"
    assert dict(event.attributes or {}) == {"exception.type": "ValueError", "exception.escaped": "False", "extra": "x"}
    assert "whsec_leak" not in finished.to_json()


def test_links_and_events_are_kept_and_an_invalid_link_is_not() -> None:
    tracer, exporter = _tracer()
    other = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(1))
    with tracer.request(ROUTE, ROUTE) as span:
        assert span is not None
        span.add_link(other, {"why": "original"})
        span.add_link(INVALID_SPAN_CONTEXT)
        span.add_event("parked", {"n": 1}, timestamp=5)
    (finished,) = exporter.get_finished_spans()
    assert [link.context for link in finished.links] == [other]
    assert [(event.name, event.timestamp) for event in finished.events] == [("parked", 5)]


def test_every_processor_sees_each_span_start_and_end_in_the_order_they_were_added() -> None:
    seen: list[tuple[str, str, str]] = []

    class Seen(SpanProcessor):
        def __init__(self, label: str) -> None:
            self.label = label

        def on_start(self, span: Span, parent_context: object = None) -> None:
            seen.append((self.label, "start", span.name))

        def on_end(self, span: ReadableSpan) -> None:
            seen.append((self.label, "end", span.name))

    tracer = Tracer.build(TracingConfig(ratio=1.0), Seen("a"), Seen("b"))
    with tracer.request(ROUTE, ROUTE):
        pass
    name = f"POST {ROUTE}"
    assert seen == [("a", "start", name), ("b", "start", name), ("a", "end", name), ("b", "end", name)]
    seen.clear()
    with Tracer.build(TracingConfig(ratio=1.0)).request(ROUTE, ROUTE):  # no processor: nothing to call
        pass
    assert seen == []
