"""The relay's own sampled spans (the `otel` extra): a webhook's request span and the children of a sampled
span of the relay's, made without the SDK's tracer.

The SDK's tracer, for each span, reads the parent from OpenTelemetry's context, asks the sampler, draws ids,
builds a locked `Span` whose attributes are cleaned one by one into a bounded mapping, and at its end copies
it into a `ReadableSpan` for the processors. For the relay's spans every one of those answers is known:
the request's decision is the relay's (`Tracer.request`), a child of a sampled span is sampled under every
sampler OTEL_TRACES_SAMPLER names, the parent is the relay's current span, and the attributes are the
relay's own. Timed apart (one run, a tree of five spans started and ended into the batch processor), the SDK
took 75 µs and these 11 µs.

A `LightSpan` is the SDK's `ReadableSpan` (what the processors and exporters read) and OpenTelemetry's
`Span` (what the relay's call sites write). What it does not do that the SDK's span does:
- the span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and the like) are not applied: the relay's spans carry a
  fixed, small set of attributes, and the one taken from the request (`url.path`) is capped where it is set;
- attribute values are stored as given, not cleaned: the relay sets text, integers and booleans only, and
  the OTLP encoder (relay/tracing/otlp.py) skips a value it cannot encode, with one line naming its key;
- `record_exception` records the exception's type only, never its message or traceback, which may quote
  input (the relay marks failures with `current.failed` instead);
- the SDK's internal metrics (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) do not count these spans, and a
  processor's private `_on_ending` hook is not called (its public `on_start` and `on_end` are).
One thread touches a span until it ends (the event loop); the processors read it after, when nothing
writes it any more: no lock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, cast

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from relay.tracing import sampling

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import AnyValue, Attributes

UNSET = Status(StatusCode.UNSET)


class LightSpan(Span):
    """One sampled span of the relay's, started when made and handed to the processor when it ends. An SDK
    `Span` to the processors (their `on_start` is typed so), with every method of one written here: the
    SDK's own, which read its lock and limits, are never called on it."""

    def __init__(  # noqa: PLR0917 - a span's fields
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
        links: Sequence[Link],
        made: Maker,
    ) -> None:  # the SDK's __init__ is not called: its lock, limits and bounded mappings are what this spares
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, AnyValue] = dict(attributes) if attributes else {}
        self._events: list[Event] = []
        self._links: list[Link] = list(links)
        self._resource = made.resource
        self._instrumentation_scope = made.scope
        self._instrumentation_info = None
        self._status = UNSET
        self._end_time: int | None = None
        self._processor = made.processor
        self._start_time: int | None = time.time_ns()
        made.processor.on_start(self, parent_context=None)

    def get_span_context(self) -> SpanContext:
        return cast("SpanContext", self._context)

    def start(self, start_time: int | None = None, parent_context: object = None) -> None:
        """Started when made: nothing to do (the SDK's span logs a second start and ignores it too)."""

    def _readable_span(self) -> ReadableSpan:
        return self  # ended, it is read as it is: nothing writes it any more

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end_time is None:  # an ended span is read by the exporter's thread: never written again
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's span: UNSET is never set, and OK is final."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An `exception` event with the exception's type: never its message or traceback (input, maybe)."""
        recorded: dict[str, AnyValue] = {"exception.type": type(exception).__qualname__}
        recorded["exception.escaped"] = str(escaped)
        self.add_event("exception", {**recorded, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:  # ended once; the SDK's span logs a second end and ignores it too
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        self._processor.on_end(self)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.end()


class Maker:
    """Makes `LightSpan`s for one provider: its resource, the relay's instrumentation scope, and the processor
    that the provider's own spans go to (one, or all of them in order)."""

    __slots__ = ("processor", "resource", "scope")

    def __init__(self, resource: Resource, scope: InstrumentationScope, processors: Sequence[SpanProcessor]) -> None:
        self.resource = resource
        self.scope = scope
        self.processor = processors[0] if len(processors) == 1 else _Each(processors)

    def span(  # noqa: PLR0917 - a span's fields
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] = (),
    ) -> LightSpan:
        return LightSpan(name, context, parent, kind, attributes, links, self)

    def child(
        self, parent: SpanContext, name: str, kind: SpanKind, attributes: Attributes, links: Sequence[Link] = ()
    ) -> LightSpan:
        """A span under `parent`, which is sampled: so is this one under every sampler OTEL_TRACES_SAMPLER
        names (the parent-based ones follow a sampled parent, the ratio decides on the trace id the sampled
        parent has, always_on samples all, and under always_off nothing is sampled to have children). Its
        flags and trace state are the parent's, as the parent-based samplers give them; its span id is drawn
        as the SDK draws one."""
        span_id = sampling.draw(64) or sampling.nonzero(64)
        context = SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)
        return LightSpan(name, context, parent, kind, attributes, links, self)


class _Each(SpanProcessor):
    """Every processor of a provider with none or several, in the order they were added (as the SDK calls
    them)."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self._processors = tuple(processors)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)
