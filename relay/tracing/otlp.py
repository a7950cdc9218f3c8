"""The OTLP/HTTP exporter of the relay's spans (the `otel` extra): the SDK's own, with a cheaper encoding.

The SDK's encoder (`encode_spans`) makes each span, attribute and value a message of its own, then hands
each to its parent message, and the protobuf runtime copies what it is given (cachegrind shows its parser
running in the relay process): a span is copied again at each level it is handed up. It also hashes each
span's resource, which serializes the resource's attributes to JSON. Counted, that was the largest part of
a sampled webhook's export. `encode` builds the same request in place, each message added into its
parent, and serializes it once: the same bytes as the SDK's (tests/tracing/test_otlp.py compares them byte
for byte, for the relay's spans and for attributes hypothesis draws). Values other than text, numbers and
booleans, events and links go through the SDK's own encoders."""

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
    # By identity first: grouping by value hashes the resource (JSON) for every span. Each entry keeps its two
    # objects, so that neither is freed and its id given to another while the entry is looked up by it.
    groups: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
    resources: dict[Any, tuple[Any, dict[Any, Any]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        found = groups.get((id(resource), id(scope)))
        if found is None:
            found = groups[id(resource), id(scope)] = (resource, scope, _group(request, resources, resource, scope))
        _span(found[2].add(), span)
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
    relay's), anything else made by the SDK's `_encode_value` and copied. One that protobuf refuses (an
    integer beyond 64 bits, a lone surrogate in a key or a text) is skipped, as the SDK's encoder skips it,
    with one line naming its key and the error's class (never the value). Events', links', the resource's and
    the scope's attributes go through the SDK's `_encode_attributes`, which logs its own way (the value
    too); the relay sets none that protobuf refuses."""
    added = len(into)
    for key, value in attributes.items():
        kind = type(value)
        try:
            if kind is str:
                into.add(key=key).value.string_value = value
            elif kind is int:
                into.add(key=key).value.int_value = value
            elif kind is bool:
                into.add(key=key).value.bool_value = value
            elif kind is float:
                into.add(key=key).value.double_value = value
            else:
                into.add(key=key, value=_encode_value(value))
        except Exception as error:  # the SDK's encoder skips it and goes on, and so does this
            del into[added:]  # the pair added before its value was refused, if it was
            logger.warning("tracing: attribute %r not encoded for OTLP (%s)", key, type(error).__name__)
            continue
        added += 1


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (its endpoint, headers, TLS, compression, timeout and retries, read
    from the same `OTEL_*` variables), sending what `encode` makes. A batch goes through the SDK's `export`
    instead, unchanged, when the SDK's attributes this reads (`PRIVATE`) are missing, when the exporter is
    shut down, when `encode` fails (logged once per exporter), and when the batch is over the size limit.
    The exporter's own duration metric (off unless OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) then times the
    sending, not the encoding."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own = all(hasattr(self, name) for name in PRIVATE)
        """Whether `export` encodes the batch itself (a test holds it true at the pinned version)."""
        self._failed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.own or self._shutdown:
            return super().export(spans)
        data = self._encoded(spans)
        if data is None or 0 < self._max_request_size < len(data):  # the SDK's path logs it, its own way
            return super().export(spans)
        with self._metrics.export_operation(len(spans)) as result:
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {"http.response.status_code": sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _encoded(self, spans: Sequence[ReadableSpan]) -> bytes | None:
        """`encode(spans)`, or None if it failed (outside the `except`: the SDK's path then logs its own lines
        without this error chained to them)."""
        try:
            return encode(spans)
        except Exception as error:  # the SDK's encoder then has the batch
            if not self._failed:
                self._failed = True
                logger.warning(
                    "tracing: the relay's OTLP encoding failed (%s): a batch it fails on goes through the SDK's"
                    " encoder (logged once per exporter)",
                    type(error).__name__,
                )
            return None
