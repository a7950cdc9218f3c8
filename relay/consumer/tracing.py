"""Continue the relay's trace in a consumer: one CONSUMER span per record handled.

Its parent is the record's `traceparent` Kafka header (the relay span the record was made under); it links to the
CloudEvent's `traceparent` attribute (where the webhook came in: the creation context, unchanged by a replay from
the DLQ and by a spool drain; a replay from a captured file sets its own). A missing, malformed or all-zero
context is ignored: the span is then a root (or has no link).

OpenTelemetry is optional. Without `opentelemetry-api` installed, `process_span` yields None and does nothing;
with the API but no SDK configured, the API's own no-op tracer makes the span free.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from relay.consumer.events import Event
from relay.consumer.tracecontext import (
    TraceParent,
    header_traceparent,
    header_tracestate,
    parse_traceparent,
    usable_tracestate,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, SpanContext, Tracer

TRACER_NAME = "relay.consumer"


@contextmanager
def process_span(
    record: Any, *, event: Event | None = None, group: str | None = None, tracer: Tracer | None = None
) -> Iterator[Span | None]:
    """A CONSUMER span around the handling of `record` (an aiokafka ConsumerRecord or alike).

    Args:
        record: has `headers` (a sequence of (str, bytes)); `topic`, `partition`, `offset` are read if present.
        event: the parsed event, for the link to its creation context and the CloudEvents attributes.
        group: the consumer group, if the consumer has one.
        tracer: defaults to the global tracer provider's tracer named `relay.consumer`.

    Yields:
        The span, or None when OpenTelemetry is not installed. An exception raised in the block marks the
        span failed with the exception's type as `error.type` (never its message nor its stack trace, which
        may quote the payload) and propagates unchanged.
    """
    try:
        from opentelemetry import trace  # noqa: PLC0415 (optional: imported only when used)
        from opentelemetry.context import Context  # noqa: PLC0415
    except ImportError:
        yield None
        return
    headers = getattr(record, "headers", None)
    parent = _span_context(header_traceparent(headers), header_tracestate(headers))
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent), Context()) if parent else Context()
    topic = getattr(record, "topic", None)
    with (tracer or trace.get_tracer(TRACER_NAME)).start_as_current_span(
        f"process {topic}" if isinstance(topic, str) else "process",
        context=context,
        kind=trace.SpanKind.CONSUMER,
        attributes=_attributes(record, event, group),
        links=_creation_link(event),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
            raise


def _span_context(parent: TraceParent | None, tracestate: Sequence[str] = ()) -> SpanContext | None:
    if parent is None:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState  # noqa: PLC0415

    return SpanContext(
        trace_id=parent.trace_id,
        span_id=parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.flags & TraceFlags.SAMPLED),
        trace_state=TraceState.from_header(list(tracestate)) if tracestate else TraceState(),
    )


def _creation_link(event: Event | None) -> list[Link]:
    if event is None:
        return []
    state = [event.tracestate] if event.tracestate and usable_tracestate(event.tracestate) else []
    creation = _span_context(parse_traceparent(event.traceparent), state)
    if creation is None:
        return []
    from opentelemetry.trace import Link  # noqa: PLC0415

    return [Link(creation)]


def _attributes(record: Any, event: Event | None, group: str | None) -> Mapping[str, str | int]:
    attributes: dict[str, str | int] = {"messaging.system": "kafka", "messaging.operation.type": "process"}
    attributes["messaging.operation.name"] = "process"
    for name, value in (
        ("messaging.destination.name", getattr(record, "topic", None)),
        ("messaging.consumer.group.name", group),
    ):
        if isinstance(value, str):
            attributes[name] = value
    partition, offset = getattr(record, "partition", None), getattr(record, "offset", None)
    if isinstance(partition, int) and not isinstance(partition, bool):
        attributes["messaging.destination.partition.id"] = str(partition)
    if isinstance(offset, int) and not isinstance(offset, bool):
        attributes["messaging.kafka.offset"] = offset
    if event is not None:
        attributes.update(_event_attributes(event))
    return attributes


def _event_attributes(event: Event) -> dict[str, str]:
    attributes = {
        "messaging.message.id": event.id,
        "cloudevents.event_id": event.id,
        "cloudevents.event_source": event.source,
        "cloudevents.event_type": event.type,
        "cloudevents.event_spec_version": "1.0",
    }
    if event.subject is not None:
        attributes["cloudevents.event_subject"] = event.subject
    return attributes
