"""The context the relay made current, as the request path reads it: a context variable of the relay's own,
set by a block around a span (`Active`) or around an unsampled request's context (`Unsampled`)."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, Status, StatusCode

logger = logging.getLogger("relay.tracing.otel")  # the name these lines had before this module was split out


def failed(span: Span, error: BaseException) -> None:
    """Mark `span` failed with the reason code (or the exception's class): never the message, which may
    quote input."""
    span.set_attribute("error.type", str(getattr(error, "reason", None) or type(error).__name__))
    span.set_status(Status(StatusCode.ERROR))


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class Current:
    """The context a block made current (`Active`, `Unsampled`), as the request path reads it: its span (none
    for an unsampled request) and ids, whether it is sampled and valid, and its `traceparent` and record
    headers, made once (the CloudEvent's, then the record's). Read from a context variable of the relay's
    own: one C call where the OpenTelemetry API takes about ten Python calls per read, a dozen reads per
    webhook (bench/inprocess.py --instructions)."""

    __slots__ = ("context", "made_headers", "made_traceparent", "sampled", "span", "span_id", "trace_id", "valid")

    def __init__(self, span: Span) -> None:
        self.span: Span | None = span
        context = span.get_span_context()
        self.context: SpanContext | None = context
        self.trace_id, self.span_id = context.trace_id, context.span_id
        self.sampled: bool = context.trace_flags.sampled
        self.valid: bool = context.is_valid
        self.made_traceparent = ""
        self.made_headers: tuple[tuple[str, bytes], ...] = ()

    def traceparent(self) -> str:
        if not self.made_traceparent and self.context is not None:
            self.made_traceparent = _traceparent(self.context)
        return self.made_traceparent

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """`traceparent`, and `tracestate` when it is not empty."""
        if not self.made_headers and self.context is not None:
            parent = ("traceparent", self.traceparent().encode())
            state = self.context.trace_state
            text = state.to_header() if state else ""
            self.made_headers = (parent, ("tracestate", text.encode())) if text else (parent,)
        return self.made_headers


CURRENT: ContextVar[Current | None] = ContextVar("mytpe_relay_current_span", default=None)
"""Set and reset by `Active` with OpenTelemetry's own context, so both name the same span (a test holds the
two equal), and by `Unsampled` alone: an unsampled request's context, under which no SDK span starts. Every
context the relay makes current goes through one of those two, and the background tasks that start from an
empty context start from an empty one of each."""
SAMPLED: ContextVar[bool] = ContextVar("mytpe_relay_sampled", default=False)
"""`CURRENT.get().sampled`, kept apart so that the request path asks it with one C call (`Tracer.sampled`,
bound to its `get`; a Python method took three times as long, about seven times per webhook). Set and reset
with `CURRENT` by `Active`, and by `Unsampled` when a sampled block holds it (no call site enters one there).
The two agree while blocks exit in the order they were entered, in the context they were entered in, as every
call site's do. A block exited in another context is misuse, logged once (`reset`); blocks exited out of
order in one context are not detected, and leave `CURRENT` naming an outer block's ended span, and the two
may then disagree."""


class Active:
    """A span current for one `with` block: ended at its exit unless `end` is False."""

    __slots__ = ("_end", "_mine", "_sampled", "_span", "_token")

    def __init__(self, span: Span, *, end: bool = True) -> None:
        self._span = span
        self._end = end
        self._token: object = None
        self._mine: object = None
        self._sampled: object = None

    def __enter__(self) -> Span:
        current = Current(self._span)  # first: a span that cannot be read leaves nothing attached
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._mine = CURRENT.set(current)
        self._sampled = SAMPLED.set(current.sampled)
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Never raises (`reset`); the span still ends."""
        if reset(self._mine):  # else exited in another context: logged once, and SAMPLED's token is foreign too
            SAMPLED.reset(self._sampled)  # type: ignore[arg-type]
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if self._end:
            if error is not None:
                failed(self._span, error)
            self._span.end()


class Unsampled(Current):
    """The block of a webhook request the ratio did not sample: a context of the relay's own making (its trace
    and span ids drawn as the SDK draws them, the sampled flag clear), current for the relay's reads only.
    The SDK would make the same decision and record nothing; making its span, and attaching it to
    OpenTelemetry's context, cost an unsampled webhook more than the rest of tracing
    (bench/inprocess.py --instructions --ratio 0). Nothing under it starts an SDK span: `child` and `send`
    read `CURRENT` first, and re-verification, replay and drain spans are roots."""

    __slots__ = ("_mine", "_sampled")

    def __init__(self, trace_id: int, span_id: int) -> None:  # every field is set here, not by Current
        self.span = self.context = None  # no span, and no SpanContext made: the ids are all it needs
        self.trace_id, self.span_id = trace_id, span_id
        self.sampled, self.valid = False, True
        # Read once per webhook (the CloudEvent's, the record's): made now. Hex by bytes: a format spec on a
        # 128-bit int costs a third more (bench/inprocess.py --instructions). Flags 02: not sampled, and the
        # trace id random (W3C Level 2), as the SDK writes them for a root whose ids it draws.
        text = self.made_traceparent = f"00-{trace_id.to_bytes(16, 'big').hex()}-{span_id.to_bytes(8, 'big').hex()}-02"
        self.made_headers = (("traceparent", text.encode()),)
        self._mine: object = None
        self._sampled: object = None

    def __enter__(self) -> None:
        self._mine = CURRENT.set(self)
        if SAMPLED.get():  # under a sampled block (no call site enters one there): not sampled in this one
            self._sampled = SAMPLED.set(False)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:  # `reset` inlined: one call fewer on every unsampled webhook
            CURRENT.reset(self._mine)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as exc:
            misused(exc)
            return  # SAMPLED's token, if any, is of that other context too
        if self._sampled is not None:
            SAMPLED.reset(self._sampled)  # type: ignore[arg-type]


def reset(token: object) -> bool:
    """Reset `CURRENT`; whether it was. Never raises: a block exited in another context than it entered
    (misuse; no call site does) is logged, as OpenTelemetry's own detach logs it."""
    try:
        CURRENT.reset(token)  # type: ignore[arg-type]
    except (ValueError, RuntimeError) as exc:
        misused(exc)
        return False
    return True


def misused(exc: Exception) -> None:
    logger.error("tracing: a span's block was exited in another context than it was entered in (%r)", exc)
