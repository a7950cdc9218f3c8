"""The webhook endpoint, on raw ASGI: the body under its bounds, the pipeline, and the one place
where an outcome or a refusal becomes an answer, a count, a duration and a log line.

It is the hot path, so it skips Starlette's per-request machinery (Request objects, the router and
two exception middlewares): the app hands `POST /webhooks/mytpe` straight to it (see `app.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from relay.errors import BodyTimeout, BodyTooLarge, ClientGone, RelayError, Unavailable, UnknownSource
from relay.http.server import BODY_RECEIVED
from relay.metrics import UNKNOWN_SOURCE, RequestMetrics
from relay.pipeline.deliverer import Deliverer
from relay.pipeline.records import Outcome
from relay.pipeline.relay import Relay
from relay.settings import Settings
from relay.sources.config import BASE_PATH
from relay.sources.registry import SourceRegistry

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger("relay.requests")
errors_logger = logging.getLogger("relay.app")

PATH = BASE_PATH
PREFIX = BASE_PATH + "/"
ROUTE = PREFIX + "{source}"
"""`http.route` of a named source's path (the source's name is in `url.path`)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


class RawHeaders:
    """The request's headers as uvicorn gives them (names lower-cased), read without copying them all."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def getlist(self, key: str) -> list[str]:
        name = key.encode("latin-1")
        return [value.decode("latin-1") for field, value in self._raw if field == name]

    def content_length(self) -> int | None:
        for field, value in self._raw:
            if field == b"content-length":
                return int(value) if value.isdigit() else None
        return None


async def read_body(receive: Receive, declared: int | None, limit: int, timeout: float, *, received: bool) -> bytes:
    """The raw body: 413 as soon as it is known to exceed `limit` bytes, 503 if not complete in `timeout`.

    `received`: the server already holds the whole body (BODY_RECEIVED), so nothing can stall.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    if received:
        return await _read(receive, limit)
    try:
        async with asyncio.timeout(timeout):
            return await _read(receive, limit)
    except TimeoutError:
        raise BodyTimeout(timeout) from None


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the whole body in one piece: the usual case, no copy
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


_CLOSE = (b"connection", b"close")


class WebhookEndpoint:
    """`POST /webhooks/mytpe[/{source}]` as an ASGI app bound to one Relay: the path names the source,
    found with one dict lookup whatever the number of sources."""

    def __init__(
        self,
        relay: Relay,
        *,
        sources: SourceRegistry,
        admission: Deliverer,
        settings: Settings,
        metrics: RequestMetrics,
        tracer: Tracer | None = None,
    ) -> None:
        self._relay = relay
        self._tracer = tracer
        self._sources = sources
        self._admission = admission
        self._limit, self._timeout = settings.max_body_bytes, settings.body_timeout_seconds
        self._metrics = metrics
        self._observe_duration = metrics.request_duration.observe
        # Children resolved once: a labelled metric's `labels()` costs a lock and a dict lookup per call.
        self._counts: dict[tuple[str, str], Callable[[], None]] = {}
        self._count = metrics.requests.labels

    def forget_counts(self) -> None:
        """Drop the resolved children (after a reload removed a source and its series)."""
        self._counts = {}

    def entry(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI callable for the app to hold."""
        return self._serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request, in its SERVER span when tracing is on. The span's block is entered and exited here, not
        by a `with` in a coroutine around this one: that layer cost every unsampled webhook about 3k
        instructions, 0.5% (bench/counted.py). Off, it costs three checks (`_tracer`, then `span` twice).
        The request's duration starts once the span is current, as it did inside that layer."""
        path: str = scope["path"]
        span = None if self._tracer is None else self._tracer.request(path, ROUTE if path != PATH else PATH)
        if span is not None:
            span.__enter__()
        started = time.perf_counter()
        try:
            headers = RawHeaders(scope["headers"])
            source = self._sources.lookup(path)
            name = UNKNOWN_SOURCE if source is None else source.name
            body = None
            received = BODY_RECEIVED in scope.get("extensions", ())
            try:
                if source is None:
                    raise UnknownSource
                self._admission.admit()
                try:
                    length = headers.content_length()
                    body = await read_body(receive, length, self._limit, self._timeout, received=received)
                    outcome = await self._relay.handle(headers, body, source)
                finally:
                    self._admission.leave()
            except (RelayError, asyncio.CancelledError) as exc:
                # Cancelled: cut by uvicorn at the shutdown bound (RELAY_SHUTDOWN_TIMEOUT_SECONDS), the claim
                # released (the deliverer's). Answered here, as every refusal is, and the task ends: uvicorn would
                # log a traceback and answer its own 500, which MyTPE is not known to retry.
                refusal = (
                    exc if isinstance(exc, RelayError) else Unavailable("shutting_down", "cut at the stop's bound")
                )
                status, payload, extra = self._refused(refusal, name, headers, started)
                if body is None and not received:  # answered before the body came: the connection closes, so
                    extra = (*extra, _CLOSE)  # no body still owed (`Expect: 100-continue`) is read as the next request

            except Exception as exc:  # the 500 of last resort: logged with its traceback, never a payload
                errors_logger.error("unexpected error handling POST %s", path[:100], exc_info=exc)
                self._account(name, "internal_error", 500, logging.ERROR, started, delivery_id=_delivery(headers))
                status, payload, extra = 500, b'{"status":"error","reason":"internal_error"}', ()
            else:
                status, payload, extra = 200, self._accepted(outcome, name, started), ()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *extra],
                }
            )
            await send({"type": "http.response.body", "body": payload})
        except BaseException as exc:  # cancelled, or the answer could not be sent: the span ends failed
            if span is not None:
                span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if span is not None:
            span.__exit__(None, None, None)

    def _accepted(self, outcome: Outcome, source: str, started: float) -> bytes:
        content: dict[str, Any] = {"status": outcome.status, "delivery_id": outcome.delivery_id}
        if outcome.reason is not None:
            content["reason"] = outcome.reason
        if outcome.spooled:
            content["spooled"] = True
        level = logging.WARNING if outcome.status == "quarantined" else logging.DEBUG
        fields: dict[str, Any] = {"delivery_id": outcome.delivery_id, "reason": outcome.reason}
        if outcome.spooled:
            fields["spooled"] = True
        if outcome.ack is not None and logger.isEnabledFor(level):
            fields.update(topic=outcome.ack.topic, partition=outcome.ack.partition, offset=outcome.ack.offset)
        self._account(source, outcome.status, 200, level, started, **fields)
        return orjson.dumps(content)

    def _refused(
        self, exc: RelayError, source: str, headers: RawHeaders, started: float
    ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        """The one mapping of a refusal to its answer: the status code, the body and the metric label."""
        metrics = self._metrics
        content: dict[str, Any] = {"status": exc.status, "reason": exc.reason}
        extra: tuple[tuple[bytes, bytes], ...] = ()
        cause = None
        if isinstance(exc, Unavailable):
            cause = exc.cause
            metrics.publish_errors.labels(cause).inc()
            content["cause"] = cause
        else:
            metrics.verification_failures.labels(source, exc.reason).inc()
        if exc.retry_after is not None:
            extra = ((b"retry-after", str(exc.retry_after).encode()),)
        if exc.detail:
            content["detail"] = exc.detail
        level = logging.WARNING if exc.retry_after is not None else logging.DEBUG
        self._account(
            source,
            exc.reason,
            exc.status_code,
            level,
            started,
            delivery_id=_delivery(headers),
            cause=cause,
            detail=exc.detail,
        )
        return exc.status_code, orjson.dumps(content), extra

    def _account(self, label: str, outcome: str, http_status: int, level: int, started: float, **fields: Any) -> None:
        """The one account of a finished webhook request: its outcome count, its duration and its log line."""
        count = self._counts.get((label, outcome))
        if count is None:
            count = self._counts[(label, outcome)] = self._count(label, outcome).inc
        count()
        elapsed = time.perf_counter() - started
        tracer = self._tracer
        if tracer is None or not tracer.sampled():  # off, or nothing to record on the span and no exemplar
            self._observe_duration(elapsed)
        else:  # the outcome on the request's span; its trace id is the duration's exemplar
            self._observe_duration(elapsed, tracer.answered(outcome, http_status, label, fields.get("delivery_id")))
        if logger.isEnabledFor(level):
            log_request(level, outcome, http_status, elapsed, source=label, **fields)


def log_request(level: int, outcome: str, http_status: int, elapsed: float | None, **fields: Any) -> None:
    """The one log line per webhook request: its outcome and, once published, where the record is."""
    if not logger.isEnabledFor(level):
        return
    extra = {k: v for k, v in fields.items() if v not in (None, "")}
    duration_ms = None if elapsed is None else round(elapsed * 1000, 3)
    extra.update(outcome=outcome, http_status=http_status, duration_ms=duration_ms)
    where = f" -> {extra['topic']}[{extra['partition']}]@{extra['offset']}" if "topic" in extra else ""
    why = "".join(f" {key}={extra[key]}" for key in ("cause", "reason") if key in extra)  # the text format's too
    delivery = extra.get("delivery_id", "-")
    logger.log(level, "%d %s delivery=%s%s%s", http_status, outcome, delivery, why, where, extra=extra)


def _delivery(headers: RawHeaders) -> str:
    """The delivery-id header for log lines: unverified, so printable ASCII only and capped."""
    values = headers.getlist("x-mytpepay-delivery-id")
    raw = values[0] if values else ""
    return "".join(c for c in raw[:64] if "!" <= c <= "~") or "-"
