"""The OpenTelemetry SDK behind the relay's spans (the `otel` extra): the provider, its sampler and
exporter, the spans of the request path, and the W3C context written on records."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from relay import __version__
from relay.tracing.config import TracingConfig
from relay.tracing.w3c import valid_traceparent

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.util.types import AttributeValue

    Attributes = Mapping[str, AttributeValue]

INSTRUMENTATION = "relay"
logger = logging.getLogger(__name__)
_UNSAMPLED: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)
"""What `Tracer.child` gives under an unsampled request: one shared block whose span records nothing."""
SHUTDOWN_SECONDS = 5.0
BATCH_LOGGER = "opentelemetry.sdk._shared_internal"  # the batch processor's; it names each span it drops
HEADERS_LOGGER = "opentelemetry.util.re"  # the SDK's parser of OTEL_EXPORTER_OTLP_HEADERS: it logs a bad one whole


def sampler_of(config: TracingConfig) -> Sampler:
    """OTEL_TRACES_SAMPLER as the spec names them. MyTPE sends no context: a root's ratio decides."""
    name = config.sampler.removeprefix("parentbased_")
    base: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(name) or TraceIdRatioBased(config.ratio)
    return ParentBased(base) if config.sampler.startswith("parentbased_") else base


class Tracer:
    """Starts the relay's spans on a provider of its own (the global one is left alone)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION, __version__)

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracer:
        """Spans go out over OTLP/HTTP from the batch processor's thread: the event loop never waits for an
        export, and a full queue drops spans (never a request). The headers are the ones `config` checked
        and parsed; OTEL_EXPORTER_OTLP_TIMEOUT, TLS and compression are read by the exporter itself."""
        quiet_drops()
        exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers) or None)
        return cls.build(config, BatchSpanProcessor(exporter))

    @classmethod
    def build(cls, config: TracingConfig, *processors: SpanProcessor) -> Tracer:
        resource = Resource.create({SERVICE_NAME: config.service_name, SERVICE_VERSION: __version__})
        provider = TracerProvider(sampler=sampler_of(config), resource=resource)
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Export what is queued, for at most `timeout` seconds (the SDK's own bound is 30 s), then return:
        the export threads are daemons, so a collector that does not answer never holds the exit."""
        closing = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        closing.start()
        closing.join(timeout)

    def request(self, path: str, route: str) -> Active:
        """The SERVER span of one webhook request, a root: a caller's `traceparent` is not trusted."""
        span = self._tracer.start_span(f"POST {route}", Context(), SpanKind.SERVER)
        if span.is_recording():  # the ratio's samplers read no attribute: set them only on a span that keeps them
            span.set_attributes({"http.request.method": "POST", "http.route": route, "url.path": path[:200]})
        return Active(span)

    def child(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
        """A span under the current one, current while the block runs. Under a request the ratio did not
        sample, none: its children would not be recorded either, and making them cost an unsampled webhook
        about 30 CPU µs (bench/tracing.py). A sampled parent that has ended (a late acknowledgement's
        commit) still gets its child."""
        current = CURRENT.get()
        if current is None or not current.sampled:
            return _UNSAMPLED
        return Active(self._tracer.start_span(name, None, SpanKind.INTERNAL, attributes))

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
        """A span ended by hand (`spans.end`). `root`: a new trace, whatever is current."""
        return self._tracer.start_span(name, Context() if root else None, kind, attributes, links)

    def send(
        self, topic: str, delivery_id: str, *, name: str = "send", links: Sequence[Link] = (), root: bool = False
    ) -> Span:
        """The PRODUCER span of one record, ended by hand at Kafka's acknowledgement (`spans.acked`). Under
        a span the ratio did not sample, that span itself (ending it does nothing): the record then carries
        the unsampled request's context, its sampled flag clear, so the consumers' parent-based sampling agrees."""
        if not root:
            current = CURRENT.get()
            if current is None:
                return trace.INVALID_SPAN
            if not current.sampled:
                return current.span
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            "messaging.operation.name": name,
        }
        if delivery_id:
            attributes["mytpe.delivery_id"] = delivery_id
        parent = Context() if root else None
        return self._tracer.start_span(f"{name} {topic}", parent, SpanKind.PRODUCER, attributes, links)

    def drain(
        self, topic: str, headers: Sequence[tuple[str, bytes]], *, row: int
    ) -> tuple[Span, list[tuple[str, bytes]]]:
        """A spooled record's send span, a new trace linked to the one its `traceparent` header names, and
        its headers with this hop's context in place of the one it was spooled with."""
        found = dict(headers)
        original = link(found.get("traceparent"), tracestate=found.get("tracestate"))
        span = self.send(topic, "", name="drain", links=[original] if original else (), root=True)
        span.set_attribute("mytpe.spool.row", row)
        kept = [(name, value) for name, value in headers if name not in ("traceparent", "tracestate")]
        with self.use(span):
            return span, [*kept, *self.headers()]

    def links(self, traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> list[Link]:
        """A link to the span `traceparent` names (an original request), if it names one."""
        found = link(traceparent, tracestate=tracestate)
        return [found] if found is not None else []

    def annotate(self, attributes: Callable[[], Attributes]) -> None:
        """Add `attributes()` to the current span; not called when the span is not recorded (unsampled)."""
        current = CURRENT.get()
        if current is not None and current.sampled and current.span.is_recording():
            current.span.set_attributes(attributes())

    def use(self, span: Span) -> AbstractContextManager[Span]:
        """`span` current while the block runs; it is not ended there. Already current (an unsampled
        request's send is the request's span): nothing to attach."""
        current = CURRENT.get()
        if current is not None and current.span is span:
            return nullcontext(span)
        return Active(span, end=False)

    def answered(self, outcome: str, http_status: int, **attributes: str | None) -> dict[str, str] | None:
        """Record a request's answer on its span (`mytpe.outcome`: accepted, duplicate, quarantined or the
        refusal's reason code); the exemplar for its duration (None when not sampled)."""
        current = CURRENT.get()
        if current is None or not current.sampled or not current.span.is_recording():
            return None  # unsampled: nothing to record, and no exemplar
        span = current.span
        span.set_attribute("http.response.status_code", http_status)
        span.set_attribute("mytpe.outcome", outcome)
        for key, value in attributes.items():
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
        context = current.context
        return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}

    def traceparent(self) -> str | None:
        current = CURRENT.get()
        return current.traceparent() if current is not None and current.valid else None

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        current = CURRENT.get()
        if current is None or not current.valid:
            return ()
        parent = ("traceparent", current.traceparent().encode())
        state = current.context.trace_state
        text = state.to_header() if state else ""
        return (parent, ("tracestate", text.encode())) if text else (parent,)

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
    if isinstance(tracestate, bytes):
        tracestate = tracestate.decode("ascii", "replace")
    state = TraceState.from_header([tracestate]) if tracestate else TraceState()
    context = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)
    return Link(context)


def failed(span: Span, error: BaseException) -> None:
    """Mark `span` failed with the reason code (or the exception's class): never the message, which may
    quote input."""
    span.set_attribute("error.type", str(getattr(error, "reason", None) or type(error).__name__))
    span.set_status(Status(StatusCode.ERROR))


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class Current:
    """The span an `Active` block made current, as the request path reads it: its context, whether it is
    sampled and valid, and its `traceparent`, formatted once (the CloudEvent's, then the record header's).
    Read from a context variable of the relay's own: one C call where the OpenTelemetry API takes about
    ten Python calls per read, a dozen reads per webhook (bench/inprocess.py --instructions)."""

    __slots__ = ("_text", "context", "sampled", "span", "valid")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = span.get_span_context()
        self.sampled = self.context.trace_flags.sampled
        self.valid = self.context.is_valid
        self._text = ""

    def traceparent(self) -> str:
        if not self._text:
            self._text = _traceparent(self.context)
        return self._text


CURRENT: ContextVar[Current | None] = ContextVar("mytpe_relay_current_span", default=None)
"""Set and reset with OpenTelemetry's own context by `Active` only, so both name the same span: every span
the relay makes current goes through `Active` (a test holds the two equal), and the background tasks that
start from an empty context start from an empty one of each."""


class Active:
    """A span current for one `with` block: ended at its exit unless `end` is False."""

    __slots__ = ("_end", "_mine", "_span", "_token")

    def __init__(self, span: Span, *, end: bool = True) -> None:
        self._span = span
        self._end = end
        self._token: object = None
        self._mine: object = None

    def __enter__(self) -> Span:
        current = Current(self._span)  # first: a span that cannot be read leaves nothing attached
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._mine = CURRENT.set(current)
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Never raises: a block exited in another context than it entered (misuse; no call site does) is
        logged, as OpenTelemetry's own detach logs it, and its span still ends."""
        try:
            CURRENT.reset(self._mine)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as exc:
            logger.error("tracing: a span's block was exited in another context than it was entered in (%r)", exc)
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if self._end:
            if error is not None:
                failed(self._span, error)
            self._span.end()


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
    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
