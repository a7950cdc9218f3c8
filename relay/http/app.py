"""The app factory: routes, the lifespan that owns resources, and the one error-to-response mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from relay.dedupe.factory import dedupe_from_settings
from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import StartupError
from relay.http import probes
from relay.http.responses import ORJSONResponse
from relay.http.upkeep import Upkeep
from relay.http.webhook import PATH, PREFIX, WebhookEndpoint
from relay.kafka.publisher import KafkaPublisher
from relay.kafka.readback import KafkaFinder
from relay.metrics import Metrics
from relay.pipeline.compose import compose
from relay.pipeline.deliverer import Deliverer
from relay.settings import Settings
from relay.sources.remote import DriftWatch
from relay.spool.drainer import Drainer
from relay.spool.recovery import Recovery
from relay.spool.spool import Spool
from relay.spool.spooler import Spooler
from relay.tracing.config import SHUTDOWN_SECONDS
from relay.types import DedupeStore, Publisher

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)


class State(TypedDict):
    """What the probes and the error handler read (`request.state`)."""

    publisher: Publisher
    dedupe: DedupeStore
    spool: Spool | None
    settings: Settings
    metrics: Metrics


def create_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    dedupe: DedupeStore | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    tracer: Tracer | None = None,
) -> Starlette:
    """Build the ASGI app. Nothing connects until the lifespan starts.

    Args:
        settings: the validated configuration.
        publisher: defaults to a KafkaPublisher for `settings`.
        dedupe: defaults to the store `RELAY_DEDUPE_URL` names (memory or Redis).
        metrics: defaults to a fresh registry, so several apps can live in one process.
        clock: Unix time source, for the replay window and the lag metric.
        tracer: the spans' tracer (`relay.tracing.start`); None, tracing is off.

    Returns:
        The Starlette application.
    """
    if publisher is None:
        # With a spool, a record not acknowledged within RELAY_SPOOL_AFTER_SECONDS is spooled.
        bound = settings.spool_after_seconds if settings.spool_dir is not None else None
        publisher = KafkaPublisher.from_settings(settings, publish_timeout=bound)
    if dedupe is None:  # not `or`: an empty store has len() 0 and is falsy
        dedupe = dedupe_from_settings(settings)
    metrics = metrics if metrics is not None else Metrics()
    spooling = spooler_from_settings(settings, publisher, metrics, clock)
    spooler = spooling.spooler if spooling is not None else None
    if spooling is not None:  # a spool write, and each drained record, get spans
        spooling.spooler.tracer = spooling.drainer.tracer = tracer
    parts = compose(
        settings, publisher=publisher, dedupe=dedupe, metrics=metrics, spooler=spooler, clock=clock, tracer=tracer
    )
    sources, deliverer = parts.sources, parts.deliverer
    topics = settings.router().topics()
    metrics.prime(topics=topics)
    webhook = WebhookEndpoint(
        parts.relay, sources=sources, admission=deliverer, settings=settings, metrics=metrics, tracer=tracer
    )
    drift = DriftWatch(sources, settings, metrics)
    forget = [parts.verifier.forget_counts, webhook.forget_counts]
    upkeep = Upkeep(
        sources=sources,
        parking=parts.parking,
        attendant=parts.attendant,
        drift=drift,
        metrics=metrics,
        forget=forget,
        clock=clock,
    )
    _observe(metrics, publisher, dedupe)
    state: State = {
        "publisher": publisher,
        "dedupe": dedupe,
        "spool": spooling.spool if spooling is not None else None,
        "settings": settings,
        "metrics": metrics,
    }

    resources = _Resources(publisher, dedupe, spooling, deliverer, upkeep, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        app.state.stopping = False
        sources.starting()  # SIGHUP's default action would end a process still starting
        await resources.start(app, settings)
        logger.info(
            "relay ready: topics %s, source(s) %s, SIGTERM to exit within %ds",
            ", ".join(topics),
            ", ".join(sources.current.names()),
            math.ceil(settings.stop_bound_seconds + (SHUTDOWN_SECONDS if tracer is not None else 0.0)),  # rounded up
        )
        try:
            yield state
        finally:
            app.state.stopping = True
            await resources.stop(settings)

    routes = [
        # Starlette answers other methods on this path (405); POST never gets here (RelayApp.__call__).
        Route(PATH, webhook, methods=["POST"]),
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/metrics", probes.metrics, methods=["GET"]),
    ]
    app = RelayApp(webhook, routes=routes, lifespan=lifespan, exception_handlers={Exception: internal_error})
    app.state.stopping = False
    return app


@dataclass(frozen=True, slots=True)
class _Resources:
    """What the lifespan starts, in order, and stops in reverse."""

    publisher: Publisher
    dedupe: DedupeStore
    spooling: SpoolParts | None
    deliverer: Deliverer
    upkeep: Upkeep
    metrics: Metrics

    async def start(self, app: Starlette, settings: Settings) -> None:
        await self.dedupe.start()
        try:
            await self.publisher.start(timeout=settings.startup_timeout_seconds, background=self.spooling is not None)
        except StartupError as exc:
            logger.error("startup failed: %s", exc)
            app.state.startup_error = str(exc)
            await self.dedupe.stop()
            raise
        if self.spooling is not None:  # recovered before the first request; drained as soon as Kafka answers
            await _open_spool(app, self.spooling.spool, self.publisher, self.dedupe, settings)
            self.spooling.drainer.start()
        await self.upkeep.start()

    async def stop(self, settings: Settings) -> None:
        """Each step in turn; one that fails is said in a line, and the later ones still run (`_step`)."""
        spooling = self.spooling
        await _step("sources and parking", self.upkeep.stop())
        if spooling is not None:
            await _drain_spool(spooling, settings)  # says its own failure
        await _step("kafka producer", self.publisher.stop(timeout=settings.flush_timeout_seconds))
        # The flush answered the publishes still in flight (the drainer's, and held rows' first ones):
        # their deletes go before the close.
        settled = spooling.spooler.settle(timeout=1.0) if spooling is not None else asyncio.sleep(0)
        both = await asyncio.gather(self.deliverer.drain(timeout=1.0), settled, return_exceptions=True)
        for what, outcome in zip(("answers in flight", "spool settles"), both, strict=True):
            if isinstance(outcome, Exception):  # both have ended, failed or not, before the spool closes
                _said(what, outcome)
        if spooling is not None:
            await _step("spool", spooling.spool.close())
        await _step("dedupe store", self.dedupe.stop())
        logger.info("relay stopped: %s", _summary(self.metrics))


async def _step(what: str, step: Awaitable[object]) -> None:
    """One step of the stop: an exception is said (`_said`), and the stop goes on. A producer that fails to
    close must not leave the spool open or the Redis clients unclosed."""
    try:
        await step
    except Exception as exc:
        _said(what, exc)


def _said(what: str, exc: Exception) -> None:
    """One line, no traceback: the exception's text may quote a server's answer (cut to 200 characters, line
    breaks escaped)."""
    logger.error("stop: %s failed (%s: %r); the rest of the stop goes on", what, type(exc).__name__, str(exc)[:200])


class RelayApp(Starlette):
    """Starlette, with `POST /webhooks/mytpe` handed straight to its endpoint: the one hot path skips
    the router and the exception middlewares, which cost more than the rest of the request. The
    endpoint maps its own refusals and errors (`webhook.py`); every other route is plain Starlette."""

    def __init__(self, webhook: WebhookEndpoint, **options: Any) -> None:
        super().__init__(**options)
        self._webhook = webhook.entry()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _webhook_path(scope["path"]):
            await self._webhook(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            send = self._startup_reason(send)
        await super().__call__(scope, receive, send)

    def _startup_reason(self, send: Send) -> Send:
        """A StartupError is logged as one line by the lifespan (and printed by `serve`): uvicorn is not handed
        the traceback Starlette formats for it."""

        async def one_line(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and getattr(self.state, "startup_error", None):
                message = {**message, "message": ""}
            await send(message)

        return one_line


def _observe(metrics: Metrics, publisher: Publisher, dedupe: DedupeStore) -> None:
    """Gauges read from the resources when scraped."""
    if isinstance(publisher, KafkaPublisher):
        kafka_publisher = publisher
        publisher.on_replaced = metrics.producer_replacements.inc
        metrics.kafka_credentials_changed.set_function(lambda: float(kafka_publisher.credentials_changed()))
    if isinstance(dedupe, MemoryDedupeStore):
        memory_store = dedupe
        metrics.dedupe_entries.set_function(lambda: len(memory_store))


@dataclass(frozen=True, slots=True)
class SpoolParts:
    spool: Spool
    drainer: Drainer
    spooler: Spooler


def spooler_from_settings(
    settings: Settings, publisher: Publisher, metrics: Metrics, clock: Callable[[], float]
) -> SpoolParts | None:
    if settings.spool_dir is None:
        return None
    spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, metrics=metrics, clock=clock)
    drainer = Drainer(spool, publisher, metrics, dlq=settings.router().dlq)
    drainer.recovery = recovery_from_settings(settings, metrics)  # RELAY_SPOOL_RECOVERY_CHECK
    hold = settings.kafka_delivery_timeout_seconds + settings.publish_timeout_seconds  # the producer's own bound
    spooler = Spooler(spool, drainer, publisher, after=settings.spool_after_seconds, hold_bound=hold)
    return SpoolParts(spool, drainer, spooler)


def recovery_from_settings(settings: Settings, metrics: Metrics) -> Recovery | None:
    """The spool's recovery check, when RELAY_SPOOL_RECOVERY_CHECK is on (relay/spool/recovery.py)."""
    return Recovery(KafkaFinder.from_settings(settings), metrics) if settings.spool_recovery_check else None


async def _open_spool(
    app: Starlette, spool: Spool, publisher: Publisher, dedupe: DedupeStore, settings: Settings
) -> None:
    """A spool that cannot be opened (in use, locked, unreadable) refuses the start: never a new one beside records."""
    try:
        await spool.open()
    except StartupError as exc:
        logger.error("startup failed: %s", exc)
        app.state.startup_error = str(exc)
        await spool.close()
        await publisher.stop(timeout=settings.flush_timeout_seconds)
        await dedupe.stop()
        raise


async def _drain_spool(parts: SpoolParts, settings: Settings) -> None:
    """SIGTERM: settle the first publishes of held records while the drain pass in flight settles (never
    cancelled mid-send), then drain what Kafka takes within the bound (Settings.stop_bound_seconds)."""
    after = settings.spool_after_seconds
    try:
        await asyncio.gather(parts.spooler.settle_all(timeout=after), parts.drainer.stop(timeout=after))
        left = await parts.drainer.drain(timeout=settings.spool_drain_seconds)
    except Exception as exc:  # the rest of the shutdown (flush, close) must still run
        logger.error(
            "spool drain at shutdown failed (%s: %r); drained at the next start", type(exc).__name__, str(exc)[:200]
        )
        return
    if left:
        logger.warning("%d record(s) left in the spool %s; drained at the next start", left, settings.spool_dir)


def _webhook_path(path: str) -> bool:
    return path == PATH or path.startswith(PREFIX)


async def internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error handling %s %s", request.method, request.url.path, exc_info=exc)
    metrics: Metrics | None = getattr(request.state, "metrics", None)
    if metrics is not None:
        metrics.requests.labels("unknown", "internal_error").inc()
    return ORJSONResponse({"status": "error", "reason": "internal_error"}, status_code=500)


def _summary(metrics: Metrics) -> str:
    counts: dict[str, float] = {}
    for metric in metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:  # primed series at 0 say nothing here
                counts[sample.labels["outcome"]] = sample.value
    return ", ".join(f"{name}={int(value)}" for name, value in sorted(counts.items())) or "no requests"
