"""The relay's own sampled spans (the `otel` extra): a webhook's request span and the children of a sampled
span of the relay's, made without the SDK's tracer.

The SDK's tracer, for each span, reads the parent from OpenTelemetry's context, asks the sampler, draws ids,
builds a locked `Span` whose attributes are cleaned one by one into a bounded mapping, and at its end copies
it into a `ReadableSpan` for the processors. For the relay's spans every one of those answers is known:
the request's decision is the relay's (`Tracer.request`), a child of a sampled span is sampled under every
sampler OTEL_TRACES_SAMPLER names, the parent is the relay's current span, and the attributes are the
relay's own. Timed apart (`bench/span_costs.py`: a sampled tree of five spans started and ended into a
processor that drops them, by the relay's tracer and by the SDK's), the SDK's tracer takes about three
times as long (docs/performance.md gives the run).

A `LightSpan` is an SDK `Span` to the processors and exporters (a `ReadableSpan` they read) and
OpenTelemetry's `Span` to the relay's call sites, with every method written here. It goes to the
processors of the SDK's tracer (those of the provider, however many and whenever added), with the
resource that tracer has now (the SDK renews it in a forked child). What it does as the SDK's span does:
the span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT and the like,
`SpanLimits`) on its attributes (texts cut to the length; past the count, the oldest dropped for a new
one, and counted; a key set again is the newest); events and links bounded the same way, their attributes
kept in the SDK's own bounded mapping; an invalid link is not kept; an attribute whose key is not a
non-empty text, or whose value is not a text, number or boolean (the relay sets no other), is cleaned by
that bounded mapping itself. What it does not:
- `record_exception` records the exception's type only, never its message or traceback, which may quote
  input; an exception leaving a `with` block marks the span failed the relay's way (`current.failed`:
  `error.type` its reason code or class name, no event);
- a write after the end, a second end, a text cut on the fast path or an attribute evicted is said by no
  warning line (the SDK logs one for each);
- the SDK's internal metrics (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) do not count these spans, a
  processor's private `_on_ending` hook is not called (its public `on_start` and `on_end` are), the
  deprecated `instrumentation_info` is the SDK tracer's, and a tracer configurator (the SDK's private,
  experimental API) that disables the relay's tracer stops its roots, not these spans.
One thread touches a span until it ends (the event loop); the processors read it after, when nothing
writes it any more: no lock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from relay.tracing import sampling
from relay.tracing.current import failed

if TYPE_CHECKING:
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import AnyValue, Attributes

UNSET = Status(StatusCode.UNSET)
_PLAIN = frozenset((str, int, bool, float))
_ROOT = Context()  # what the SDK hands `on_start` for a root span: an empty context


class LightSpan(Span):
    """One sampled span of the relay's, started when made and handed to the processors when it ends. An SDK
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
    ) -> None:  # the SDK's __init__ is not called: its lock and bounded mappings are what this spares
        sdk = made.sdk
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._made = made
        self._end_time: int | None = None
        self._attributes: dict[str, AnyValue] = {}
        self._dropped = 0
        if attributes:
            self._set_all(attributes)
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._dropped_events = self._dropped_links = 0
        for link in links or ():  # None, or a None among them, as the SDK's: skipped
            if link:
                self.add_link(link.context, link.attributes)
        self._resource = sdk.resource
        self._instrumentation_scope = made.scope
        self._instrumentation_info = sdk.instrumentation_info
        self._status = UNSET
        self._processor = processor = sdk.span_processor
        self._start_time: int | None = time.time_ns()
        processor.on_start(self, parent_context=_ROOT if parent is None else None)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped

    def get_span_context(self) -> SpanContext:
        return cast("SpanContext", self._context)

    def start(self, start_time: int | None = None, parent_context: object = None) -> None:
        """Started when made: nothing to do (the SDK's span ignores a second start too)."""

    def _readable_span(self) -> ReadableSpan:
        return self  # ended, it is read as it is: nothing writes it any more

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end_time is None:  # an ended span is read by the exporter's thread: never written again
            self._set(key, value)

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._end_time is None:
            self._set_all(attributes)

    def _set_all(self, attributes: Mapping[str, AnyValue]) -> None:
        """Several at once, as the SDK sets them: the relay's (text keys; text, number or boolean values) one by
        one; a mapping with any other, cleaned whole by the SDK's bounded mapping first (a key of another
        type made text, when it can be), then each kept one set."""
        if all(type(key) is str and key and type(value) in _PLAIN for key, value in attributes.items()):
            for key, value in attributes.items():
                self._set(key, value)
            return
        limits = self._made.limits
        if limits.max_span_attributes == 0:
            self._dropped += len(attributes)
            return
        kept = BoundedAttributes(None, attributes, immutable=False, max_value_len=limits.max_span_attribute_length)
        self._dropped += kept.dropped
        for key, value in kept.items():  # cleaned already: stored as they are (a key made "" included)
            self._store(key, value)

    def _set(self, key: str, value: AnyValue) -> None:
        """The span limits, as the SDK's bounded mapping applies them: a text key and a text, number or
        boolean value here (the relay's), anything else cleaned by that mapping itself (`_cleaned`)."""
        limits = self._made.limits
        if limits.max_span_attributes == 0:
            self._dropped += 1
            return
        kind = type(value)
        if type(key) is not str or not key or kind not in _PLAIN:
            found = _cleaned(key, value, limits.max_span_attribute_length)
            if found is None:  # refused (an empty key, say): dropped and counted, as the SDK does
                self._dropped += 1
                return
            key, value = found
        elif kind is str:
            length = limits.max_span_attribute_length
            if length is not None and len(value) > length:  # type: ignore[arg-type]
                value = value[:length]  # type: ignore[index]
        self._store(key, value)

    def _store(self, key: str, value: AnyValue) -> None:
        """A cleaned attribute, stored under the count limit (not 0 here)."""
        attributes, count = self._attributes, self._made.limits.max_span_attributes
        attributes.pop(key, None)  # a key set again is the newest, as in the SDK's bounded mapping
        if count is not None and len(attributes) >= count:
            self._dropped += 1
            del attributes[next(iter(attributes))]  # the oldest makes room for it
        attributes[key] = value

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            limits = self._made.limits
            kept = BoundedAttributes(limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length)
            self._dropped_events += _bounded(self._events, Event(name, kept, timestamp), limits.max_events)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and _valid(context, attributes):
            limits = self._made.limits
            kept = BoundedAttributes(limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length)
            self._dropped_links += _bounded(self._links, Link(context, kept), limits.max_links)

    @property
    def dropped_events(self) -> int:
        return self._dropped_events

    @property
    def dropped_links(self) -> int:
        return self._dropped_links

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
        """An `exception` event with the exception's type, named as the SDK names it (module and qualified
        name): never its message or traceback (input, maybe)."""
        kind = type(exception)
        module = kind.__module__
        named = f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__
        self.add_event(
            "exception", {"exception.type": named, "exception.escaped": str(escaped), **(attributes or {})}, timestamp
        )

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:  # ended once: ignored, as the SDK's span ignores it (it logs a line too)
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        self._processor.on_end(self)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Ended; an exception marks it failed the relay's way (`current.failed`: its reason code or class)."""
        if error is not None and self._end_time is None:
            failed(self, error)
        self.end()


def _bounded(items: list[Any], item: object, limit: int | None) -> int:
    """Append `item`; past `limit`, the oldest makes room (the SDK's bounded list). How many were dropped."""
    if limit is not None and len(items) >= limit:
        if not limit:
            return 1
        del items[0]
        items.append(item)
        return 1
    items.append(item)
    return 0


def _cleaned(key: object, value: object, length: int | None) -> tuple[str, AnyValue] | None:
    """`key` and `value` as the SDK's bounded mapping keeps them (a sequence made a tuple, its texts cut,
    a value of another type made text or None; its warning lines too), or None when it refuses them."""
    kept = BoundedAttributes(None, None, immutable=False, max_value_len=length)
    kept[key] = value  # type: ignore[index, assignment]
    return next(iter(kept.items()), None)


def _valid(context: SpanContext, attributes: Attributes) -> bool:
    """The SDK's rule for a link worth keeping: a valid context, or attributes or a trace state to carry."""
    return bool(context and (context.is_valid or attributes or context.trace_state))


class Maker:
    """Makes `LightSpan`s for the SDK's tracer `sdk` (its processors and resource, read at each span), under
    the relay's instrumentation scope, with the provider's span limits."""

    __slots__ = ("limits", "scope", "sdk")

    def __init__(self, sdk: SdkTracer, scope: InstrumentationScope, limits: SpanLimits) -> None:
        self.sdk = sdk
        self.scope = scope
        self.limits = limits

    @classmethod
    def of(cls, tracer: object, scope: InstrumentationScope, limits: SpanLimits) -> Maker | None:
        """A Maker for `tracer` if it is the SDK's; None if the provider gave another (OTEL_SDK_DISABLED=true
        in the process's environment, which the SDK reads itself: its no-op tracer, under which no span is
        recorded, so none is made here either)."""
        return cls(tracer, scope, limits) if isinstance(tracer, SdkTracer) else None

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
