"""The OpenTelemetry SDK behind the relay's spans (the `otel` extra): the provider, its sampler and
exporter, the spans of the request path, and the W3C context written on records."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from requests.utils import requote_uri

from relay import __version__
from relay.tracing import sampling
from relay.tracing.config import SHUTDOWN_SECONDS, TracingConfig
from relay.tracing.current import CURRENT, SAMPLED, Active, Current, Unsampled
from relay.tracing.light import Maker
from relay.tracing.otlp import Exporter
from relay.tracing.sampling import LOW_BITS, bound_of, nonzero, sampler_of
from relay.tracing.w3c import HOP_HEADERS, valid_traceparent, valid_tracestate

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from opentelemetry.util.types import AttributeValue

    Attributes = Mapping[str, AttributeValue]

INSTRUMENTATION = "relay"
logger = logging.getLogger(__name__)
_UNSAMPLED: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)
"""What `Tracer.child` gives under an unsampled request: one shared block whose span records nothing."""
_NO_REQUEST: AbstractContextManager[None] = nullcontext(None)
"""What `Tracer.request` gives when the SDK is disabled (OTEL_SDK_DISABLED=true in the process's environment)."""
SAMPLED_ROOT = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
"""A sampled request's flags, as the SDK writes them for a root whose trace id it drew at random."""
BATCH_LOGGER = "opentelemetry.sdk._shared_internal"  # the batch processor's; it names each span it drops
HEADERS_LOGGER = "opentelemetry.util.re"  # the SDK's parser of OTEL_EXPORTER_OTLP_HEADERS: it logs a bad one whole
EXPORT_LOGGERS = (  # the OTLP/HTTP exporter's: a failed POST's line quotes the client's error, the URL's path in it
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
)


class Tracer:
    """Starts the relay's spans on a provider of its own (the global one is left alone): a webhook's sampled span
    and every child of a sampled span are the relay's (`light.LightSpan`, to the provider's processors); roots
    off the request path (replay, drain, re-verification) are the SDK's, decided by the configured sampler."""

    def __init__(self, provider: TracerProvider, bound: int, limits: SpanLimits) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION, __version__)
        self._made = Maker.of(self._tracer, InstrumentationScope(INSTRUMENTATION, __version__), limits)
        self._bound = bound
        self.sampled: Callable[[], bool] = SAMPLED.get
        """Whether the current context is sampled (call sites skip child blocks and attributes if not): a C call."""

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracer:
        """Spans go out over OTLP/HTTP from the batch processor's thread (a full queue drops spans, never a
        request); the headers `config` checked; timeout, TLS and compression read by the exporter itself."""
        quiet_drops()
        hide_secrets(config)
        exporter = Exporter(endpoint=config.endpoint, headers=dict(config.headers) or None)
        return cls.build(config, BatchSpanProcessor(exporter))

    @classmethod
    def build(cls, config: TracingConfig, *processors: SpanProcessor) -> Tracer:
        resource = Resource.create({SERVICE_NAME: config.service_name, SERVICE_VERSION: __version__})
        limits = SpanLimits()  # from the OTEL_*_LIMIT variables, for the SDK's spans and the relay's alike
        provider = TracerProvider(sampler=sampler_of(config), resource=resource, span_limits=limits)
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider, bound_of(config), limits)

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Export what is queued, for at most `timeout` seconds (the SDK's own bound is 30 s), then return:
        the export threads are daemons, so a collector that does not answer never holds the exit."""
        closing = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        closing.start()
        closing.join(timeout)

    def request(self, path: str, route: str) -> AbstractContextManager[Span | None]:
        """The SERVER span of one webhook request, a root: a caller's `traceparent` is not trusted. The relay
        draws its ids as the SDK would and applies the configured sampler's rule itself: not sampled, a context
        of its own making (`Unsampled`); sampled, a span of its own (`LightSpan`). The SDK's tracer is not
        called; the SDK disabled, no context at all, as its no-op tracer would give none."""
        made = self._made
        if made is None:
            return _NO_REQUEST
        draw = sampling.draw
        trace_id = draw(128) or nonzero(128)
        span_id = draw(64) or nonzero(64)
        if trace_id & LOW_BITS >= self._bound:  # TraceIdRatioBased's rule, on the trace id's low 64 bits
            return Unsampled(trace_id, span_id)
        attributes = {"http.request.method": "POST", "http.route": route, "url.path": path[:200]}
        context = SpanContext(trace_id, span_id, False, SAMPLED_ROOT)
        return Active(made.span(f"POST {route}", context, None, SpanKind.SERVER, attributes))

    def child(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
        """A span under the current one, current while the block runs. Under a request the ratio did not
        sample, none: its children would not be recorded either, and making them cost an unsampled webhook
        about 30 CPU µs (bench/tracing.py). A sampled parent that has ended (a late acknowledgement's
        commit) still gets its child."""
        current = CURRENT.get()
        if current is None or not current.sampled:
            return _UNSAMPLED
        return Active(self._sampled(current, name, SpanKind.INTERNAL, attributes))

    def _sampled(
        self, current: Current, name: str, kind: SpanKind, attributes: Attributes | None, links: Sequence[Link] = ()
    ) -> Span:
        """A sampled child (`Maker.child`) of the relay's current span, whatever else OpenTelemetry's has."""
        if self._made is None or current.context is None:  # the SDK disabled (a span of another's is current)
            return trace.INVALID_SPAN
        return self._made.child(current.context, name, kind, attributes, links)

    def root(self, name: str, attributes: Attributes | None = None) -> Active:
        """A span starting a new trace, current while the block runs and ended at its exit."""
        return Active(self._tracer.start_span(name, Context(), SpanKind.INTERNAL, attributes))

    def start(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        *,
        links: Sequence[Link] = (),
        root: bool = False,
    ) -> Span:
        """A span ended by hand (`spans.end`). `root`: a new trace, whatever is current. Under a sampled span
        of the relay's, its child (`_sampled`); else the SDK's, under OpenTelemetry's current context."""
        current = None if root else CURRENT.get()
        if current is not None and current.sampled:
            return self._sampled(current, name, kind, attributes, links)
        return self._tracer.start_span(name, Context() if root else None, kind, attributes, links)

    def send(
        self, topic: str, delivery_id: str, *, name: str = "send", links: Sequence[Link] = (), root: bool = False
    ) -> Span | None:
        """The PRODUCER span of one record, ended by hand at Kafka's acknowledgement (`spans.acked`). Under
        a request the ratio did not sample, None: the record then carries that request's context, its sampled
        flag clear, so the consumers' parent-based sampling agrees."""
        current = None if root else CURRENT.get()
        if not root:
            if current is None:
                return trace.INVALID_SPAN
            if not current.sampled:
                return None
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            "messaging.operation.name": name,
        }
        if delivery_id:
            attributes["mytpe.delivery_id"] = delivery_id
        if current is None:  # a root
            return self._tracer.start_span(f"{name} {topic}", Context(), SpanKind.PRODUCER, attributes, links)
        return self._sampled(current, f"{name} {topic}", SpanKind.PRODUCER, attributes, links)

    def drain(
        self, topic: str, headers: Sequence[tuple[str, bytes]], *, row: int
    ) -> tuple[Span, list[tuple[str, bytes]]]:
        """A spooled record's send span, a new trace linked to the one its `traceparent` header names, and
        its headers with this hop's context in place of the one it was spooled with."""
        found = dict(headers)
        original = link(found.get("traceparent"), tracestate=found.get("tracestate"))
        span = self.send(topic, "", name="drain", links=[original] if original else (), root=True)
        assert span is not None  # noqa: S101 - a root is always a span
        span.set_attribute("mytpe.spool.row", row)
        kept = [(name, value) for name, value in headers if name not in HOP_HEADERS]
        with self.use(span):
            return span, [*kept, *self.headers()]

    def links(self, traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> list[Link]:
        """A link to the span `traceparent` names (an original request), if it names one."""
        found = link(traceparent, tracestate=tracestate)
        return [found] if found is not None else []

    def annotate(self, attributes: Attributes) -> None:
        """Add `attributes` to the current span, if it is recorded. The request path calls it only when
        `sampled()`: an unsampled request does not even make them."""
        current = CURRENT.get()
        span = None if current is None or not current.sampled else current.span
        if span is not None and span.is_recording():
            span.set_attributes(attributes)

    def use(self, span: Span) -> AbstractContextManager[Span]:
        """`span` current while the block runs; it is not ended there. Already current (an unsampled
        request's send is the request's span): nothing to attach."""
        current = CURRENT.get()
        if current is not None and current.span is span:
            return nullcontext(span)
        return Active(span, end=False)

    def answered(self, outcome: str, http_status: int, source: str, delivery_id: str | None) -> dict[str, str] | None:
        """Record a request's answer on its span (`mytpe.outcome`: accepted, duplicate, quarantined or the
        refusal's reason code, `mytpe.source`, `mytpe.delivery_id`); the exemplar for its duration (None when
        not sampled)."""
        current = CURRENT.get()
        span = None if current is None or not current.sampled else current.span
        if span is None or not span.is_recording():
            return None  # unsampled: nothing to record, and no exemplar
        span.set_attribute("http.response.status_code", http_status)
        span.set_attribute("mytpe.outcome", outcome)
        for key, value in (("source", source), ("delivery_id", delivery_id)):
            if value and value != "-":
                span.set_attribute(f"mytpe.{key}", value)
        if http_status >= 500:
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR))
        return self.exemplar()

    def exemplar(self) -> dict[str, str] | None:
        current = CURRENT.get()
        if current is None or not current.sampled:
            return None
        return {"trace_id": format(current.trace_id, "032x"), "span_id": format(current.span_id, "016x")}

    def on_record(self) -> tuple[str | None, tuple[tuple[str, bytes], ...]]:
        """What a record made now carries: the current context's `traceparent` (its CloudEvent's, created
        here) and its Kafka headers; (None, ()) with no valid context. One call on the request path."""
        current = CURRENT.get()
        if current is None or not current.valid:
            return None, ()
        if current.made_headers:  # made already (an unsampled request's are made with it)
            return current.made_traceparent, current.made_headers
        return current.traceparent(), current.headers()

    def traceparent(self) -> str | None:
        current = CURRENT.get()
        return current.traceparent() if current is not None and current.valid else None

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        current = CURRENT.get()
        return current.headers() if current is not None and current.valid else ()

    def watch_logs(self, log_config: dict[str, Any]) -> None:
        """Log lines written while a span is current carry its `trace_id` and `span_id` (JSON fields):
        a filter on every handler of `log_config` (relay.logs.build_log_config; uvicorn applies it too)."""
        log_config.setdefault("filters", {})["trace_ids"] = {"()": TraceIds}
        for handler in log_config.get("handlers", {}).values():
            handler["filters"] = [*handler.get("filters", ()), "trace_ids"]


def link(value: str | bytes | None, *, tracestate: str | bytes | None = None) -> Link | None:
    """A link to the span a `traceparent` names (an original request), or None if it is not one."""
    text = valid_traceparent(value)
    if text is None:
        return None
    _, trace_id, span_id, flags = text.split("-")
    state_text = valid_tracestate(tracestate)
    state = TraceState.from_header([state_text]) if state_text else TraceState()
    context = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)
    return Link(context)


class QuietDrops(logging.Filter):
    """The batch processor logs one warning per span it drops when its queue is full (a collector down under
    load): let one through per `interval` seconds, saying how many were held back."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Queue full"):
            return True
        now = self._clock()
        if now < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.msg} ({self._held} more such line(s) held back since the last)"
        self._next, self._held = now + self._interval, 0
        return True


class HideHeaders(logging.Filter):
    """The SDK logs an OTEL_EXPORTER_OTLP_HEADERS item it cannot parse, whole (a token, often): keep the line,
    drop the text. TracingConfig refuses such a value first; this is the second lock."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple("(not shown)" for _ in record.args) if isinstance(record.args, tuple) else None
        return True


class HideSecrets(logging.Filter):
    """The exporter's lines quote its HTTP client's errors, and those quote the endpoint's path and query (where
    a token may be: `?api_key=…`), re-encoded by the client, and, for a value HTTP refuses, a header's value:
    each line is kept with the URL it names (`url: …`) and those texts, as given and as re-encoded, replaced.
    Texts under 8 characters are left alone (they would garble words), the URL aside. `check` never shows them
    either (TracingConfig.describe)."""

    URL = re.compile(r"(url: )\S+")

    def __init__(self, hidden: tuple[str, ...]) -> None:
        super().__init__()
        self.hidden = hidden

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a line whose arguments do not fit: logging says so itself, as it would have
            return True
        kept = self.URL.sub(r"\1(not shown)", text)
        for secret in self.hidden:
            kept = kept.replace(secret, "(not shown)")
        if kept != text:
            record.msg, record.args = kept, None
        return True


def hide_secrets(config: TracingConfig) -> None:
    """Install HideSecrets for `config` on the exporter's loggers, in place of an earlier tracer's."""
    where = urlsplit(config.endpoint or "")
    given = [where.query, where.path if where.path not in ("", "/", "/v1/traces") else ""]
    given += [value for _, value in config.headers]
    forms = {form for text in given for form in (text, unquote(text), requote_uri(text), repr(text)[1:-1])}
    hidden = tuple(sorted((form for form in forms if len(form) >= 8), key=len, reverse=True))
    for name in EXPORT_LOGGERS:
        found = logging.getLogger(name)
        for existing in [f for f in found.filters if isinstance(f, HideSecrets)]:
            found.removeFilter(existing)
        found.addFilter(HideSecrets(hidden))


def quiet_drops() -> None:
    """Install QuietDrops on the SDK's batch processor logger and HideHeaders on its headers parser's, once
    per process."""
    sdk = logging.getLogger(BATCH_LOGGER)
    if not any(isinstance(existing, QuietDrops) for existing in sdk.filters):
        sdk.addFilter(QuietDrops())
    parser = logging.getLogger(HEADERS_LOGGER)
    if not any(isinstance(existing, HideHeaders) for existing in parser.filters):
        parser.addFilter(HideHeaders())


class TraceIds(logging.Filter):
    """The current span's ids on a log record: the relay's (`CURRENT`), which an unsampled request has too."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT.get()
        if current is not None and current.valid:
            record.trace_id = format(current.trace_id, "032x")
            record.span_id = format(current.span_id, "016x")
        return True
