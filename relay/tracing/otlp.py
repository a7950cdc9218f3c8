"""The OTLP/HTTP exporter of the relay's spans (the `otel` extra): the SDK's own, with a cheaper encoding.

The SDK's encoder (`encode_spans`) makes each span, attribute and value a message of its own, then hands
each to its parent message, and the protobuf runtime copies what it is given, by serializing and parsing
it again: every span is encoded about three times. It also hashes each span's resource, which serializes
the resource's attributes to JSON. Counted, that is the largest part of a sampled webhook's export.
`encode` builds the same request in place, one message added into its parent, and serializes it once:
the same bytes as the SDK's for the spans this package makes (tests/tracing/test_otlp.py compares them,
byte for byte). Values other than text, numbers and booleans, events and links go through the SDK's own
encoders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes, _encode_value
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_events, _encode_links
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

logger = logging.getLogger(__name__)
KINDS = {
    SpanKind.INTERNAL: PB2Span.SpanKind.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: PB2Span.SpanKind.SPAN_KIND_SERVER,
    SpanKind.CLIENT: PB2Span.SpanKind.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: PB2Span.SpanKind.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: PB2Span.SpanKind.SPAN_KIND_CONSUMER,
}
LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
REMOTE = LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
PRIVATE = ("_client", "_metrics", "_shutdown", "_max_request_size")
"""What `Exporter.export` uses of the SDK exporter's own state (pinned: opentelemetry 1.45)."""


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as one serialized ExportTraceServiceRequest: grouped by resource, then by instrumentation
    scope, each group in the order it first appears (as the SDK's encoder groups them)."""
    request = ExportTraceServiceRequest()
    groups: dict[tuple[int, int], Any] = {}  # by identity: the SDK's grouping by value hashes (JSON) per span
    resources: dict[Any, tuple[Any, dict[Any, Any]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        found = groups.get((id(resource), id(scope)))
        if found is None:
            found = groups[id(resource), id(scope)] = _group(request, resources, resource, scope)
        _span(found.add(), span)
    data: bytes = request.SerializePartialToString()
    return data


def _group(request: Any, resources: dict[Any, tuple[Any, dict[Any, Any]]], resource: Any, scope: Any) -> Any:
    """The `spans` of the ScopeSpans that `resource` and `scope` (equal by value, as the SDK groups them)
    go to, made on first use. Once per distinct pair of objects in a batch."""
    held = resources.get(resource)
    if held is None:
        made = request.resource_spans.add()
        made.resource.SetInParent()
        made.resource.attributes.extend(_encode_attributes(resource.attributes))
        if resource.schema_url:
            made.schema_url = resource.schema_url
        held = resources[resource] = (made, {})
    parent, scopes = held
    spans = scopes.get(scope)
    if spans is None:
        made = parent.scope_spans.add()
        made.scope.SetInParent()
        if scope is not None:
            if scope.name:
                made.scope.name = scope.name
            if scope.version:
                made.scope.version = scope.version
            made.scope.attributes.extend(_encode_attributes(scope.attributes))
            if scope.schema_url:
                made.schema_url = scope.schema_url
        spans = scopes[scope] = made.spans
    return spans


def _span(into: Any, span: ReadableSpan) -> None:
    """`span` written into the message `into`, field by field, as the SDK's `_encode_span` would make it."""
    context = span.get_span_context()
    if context is None:  # a ReadableSpan always has one; the SDK's encoder would fail on it too
        raise ValueError(f"span {span.name!r} has no context")
    into.trace_id = context.trace_id.to_bytes(16, "big")
    into.span_id = context.span_id.to_bytes(8, "big")
    state = context.trace_state
    if state:
        into.trace_state = ",".join(f"{key}={value}" for key, value in state.items())
    parent = span.parent
    if parent is not None:
        into.parent_span_id = parent.span_id.to_bytes(8, "big")
    into.flags = REMOTE if parent is not None and parent.is_remote else LOCAL
    into.name = span.name
    into.kind = KINDS[span.kind]
    if span.start_time:
        into.start_time_unix_nano = span.start_time
    if span.end_time:
        into.end_time_unix_nano = span.end_time
    if span.attributes:
        _attributes(into.attributes, span.attributes)
    _rest(into, span)


def _rest(into: Any, span: ReadableSpan) -> None:
    """The span's events, links, status and dropped counts."""
    if span.events:
        into.events.extend(_encode_events(span.events) or ())
    if span.links:
        into.links.extend(_encode_links(span.links) or ())
    status = into.status
    status.SetInParent()
    if span.status.status_code.value:
        status.code = span.status.status_code.value
    if span.status.description:
        status.message = span.status.description
    for field, count in (
        ("dropped_attributes_count", span.dropped_attributes),
        ("dropped_events_count", span.dropped_events),
        ("dropped_links_count", span.dropped_links),
    ):
        if count:
            setattr(into, field, count)


def _attributes(into: Any, attributes: Any) -> None:
    """Each attribute added in place: text, booleans, integers and floats set directly (almost all the
    relay's); anything else made by the SDK's `_encode_value` and copied, and skipped with its key logged
    when that fails, as the SDK's encoder does."""
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            into.add(key=key).value.string_value = value
        elif kind is int:
            into.add(key=key).value.int_value = value
        elif kind is bool:
            into.add(key=key).value.bool_value = value
        elif kind is float:
            into.add(key=key).value.double_value = value
        else:
            try:
                encoded = _encode_value(value)
            except Exception:
                logger.exception("tracing: could not encode the value of attribute %s", key)
                continue
            into.add(key=key, value=encoded)


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (its endpoint, headers, TLS, compression, timeout and retries, read
    from the same `OTEL_*` variables), sending what `encode` makes. If the SDK's own state it sends with is
    not as in the pinned version, or a batch cannot be encoded or is over its size limit, the batch goes
    through the SDK's `export` instead, unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.own = all(hasattr(self, name) for name in PRIVATE)
        """Whether `export` encodes the batch itself (a test holds it true at the pinned version)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.own or self._shutdown:
            return super().export(spans)
        try:
            data = encode(spans)
        except Exception:
            return super().export(spans)
        if 0 < self._max_request_size < len(data):  # dropped, and logged, by the SDK's path
            return super().export(spans)
        with self._metrics.export_operation(len(spans)) as result:
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {"http.response.status_code": sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
