"""Helpers for call sites off the request path (replay, drain, reverify): each takes the tracer or a span
that is None when tracing is off, and then does nothing but that check (still a Python call, and a `with`
on `NO_SPAN` two more). The request path checks `tracer is None` inline instead. Nothing here imports
OpenTelemetry."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from relay.tracing.otel import Tracer

Attributes = Mapping[str, "AttributeValue"]
Scope = AbstractContextManager["Span | None"]
NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext(None)
"""The one context manager every call site gets while tracing is off: shared, so nothing is allocated (its
enter and exit are still two Python calls)."""
_NONE: tuple[tuple[str, bytes], ...] = ()


def child(tracer: Tracer | None, name: str, attributes: Attributes | None = None) -> Scope:
    """A span under the current one, current while the block runs; an exception marks it failed."""
    return NO_SPAN if tracer is None else tracer.child(name, attributes)


def end(span: Span | None, *, error: BaseException | None = None, attributes: Attributes | None = None) -> None:
    """End a span started by hand (a publish ends at Kafka's acknowledgement, not with its block)."""
    if span is None:
        return
    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        from relay.tracing.current import failed  # noqa: PLC0415 - a span exists, so the extra is loaded

        failed(span, error)
    span.end()


def acked(span: Span | None, partition: int, offset: int) -> None:
    """End a send span at Kafka's acknowledgement, with where the record was written."""
    if span is not None and span.is_recording():  # a span the ratio did not sample records nothing
        span.set_attribute("messaging.kafka.destination.partition", partition)
        span.set_attribute("messaging.destination.partition.id", str(partition))
        span.set_attribute("messaging.kafka.offset", offset)
        span.end()


def use(tracer: Tracer | None, span: Span | None) -> Scope:
    """`span` current while the block runs (not ended there)."""
    return NO_SPAN if tracer is None or span is None else tracer.use(span)


def headers(tracer: Tracer | None) -> tuple[tuple[str, bytes], ...]:
    """The Kafka record headers of the current context (`traceparent`, `tracestate` if any); none when off."""
    return _NONE if tracer is None else tracer.headers()


def traceparent(tracer: Tracer | None) -> str | None:
    """The current context as a W3C `traceparent`, or None: tracing is off, or no span is current."""
    return None if tracer is None else tracer.traceparent()
