"""The app factory: routes, the lifespan that owns resources, and the one error-to-response mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
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
from relay.http.webhook import PATH, PREFIX, WebhookEndpoint
from relay.kafka.publisher import KafkaPublisher
from relay.kafka.readback import KafkaFinder
from relay.metrics import Metrics
from relay.pipeline import Attendant, Relay
from relay.settings import Settings
from relay.sources.config import Source, SourceSet
from relay.sources.remote import DriftWatch
from relay.spool.drainer import Drainer
from relay.spool.recovery import Recovery
from relay.spool.spool import Spool
from relay.spool.spooler import Spooler
from relay.types import DedupeStore, Publisher

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)


class State(TypedDict):
    relay: Relay


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
    spooler = spooler_from_settings(settings, publisher, metrics, clock)
    if spooler is not None:
        spooler.tracer = spooler.drainer.tracer = tracer
    relay = Relay(
        settings, publisher=publisher, dedupe=dedupe, metrics=metrics, spooler=spooler, clock=clock, tracer=tracer
    )
    relay.metrics.prime(topics=relay.router.topics())
    webhook = WebhookEndpoint(relay)
    upkeep = Upkeep(relay, settings, webhook, clock)
    _observe(relay.metrics, publisher, dedupe)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        app.state.stopping = False
        await relay.dedupe.start()
        try:
            await relay.publisher.start(timeout=settings.startup_timeout_seconds, background=spooler is not None)
        except StartupError as exc:
            logger.error("startup failed: %s", exc)
            app.state.startup_error = str(exc)
            await relay.dedupe.stop()
            raise
        if spooler is not None:  # recovered before the first request; drained as soon as Kafka answers
            await _open_spool(app, relay, spooler, settings)
            spooler.drainer.start()
        await upkeep.start()
        logger.info(
            "relay ready: topics %s, source(s) %s, SIGTERM to exit within %.0fs",
            ", ".join(relay.router.topics()),
            ", ".join(relay.sources.current.names()),
            settings.stop_bound_seconds,
        )
        try:
            yield {"relay": relay}
        finally:
            app.state.stopping = True
            await upkeep.stop()
            if spooler is not None:
                await _drain_spool(spooler, settings)
            await relay.publisher.stop(timeout=settings.flush_timeout_seconds)
            # The flush answered the publishes still in flight (the drainer's, and held rows' first ones):
            # their deletes go before the close.
            settled = spooler.settle(timeout=1.0) if spooler is not None else asyncio.sleep(0)
            abandoned, _ = await asyncio.gather(relay.drain(timeout=1.0), settled)
            if abandoned:
                logger.warning("%d delivery(ies) never acknowledged; their senders were answered 503", abandoned)
            if spooler is not None:
                await spooler.spool.close()
            await relay.dedupe.stop()
            logger.info("relay stopped: %s", _summary(relay.metrics))

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


def spooler_from_settings(
    settings: Settings, publisher: Publisher, metrics: Metrics, clock: Callable[[], float]
) -> Spooler | None:
    if settings.spool_dir is None:
        return None
    spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, metrics=metrics, clock=clock)
    drainer = Drainer(spool, publisher, metrics, dlq=settings.router().dlq)
    drainer.recovery = recovery_from_settings(settings, metrics)  # RELAY_SPOOL_RECOVERY_CHECK
    hold = settings.kafka_delivery_timeout_seconds + settings.publish_timeout_seconds  # the producer's own bound
    return Spooler(spool, drainer, publisher, after=settings.spool_after_seconds, hold_bound=hold)


def recovery_from_settings(settings: Settings, metrics: Metrics) -> Recovery | None:
    """The spool's recovery check, when RELAY_SPOOL_RECOVERY_CHECK is on (relay/spool/recovery.py)."""
    return Recovery(KafkaFinder.from_settings(settings), metrics) if settings.spool_recovery_check else None


async def _open_spool(app: Starlette, relay: Relay, spooler: Spooler, settings: Settings) -> None:
    """A spool that cannot be opened (in use, locked, unreadable) refuses the start: never a new one beside records."""
    try:
        await spooler.spool.open()
    except StartupError as exc:
        logger.error("startup failed: %s", exc)
        app.state.startup_error = str(exc)
        await spooler.spool.close()
        await relay.publisher.stop(timeout=settings.flush_timeout_seconds)
        await relay.dedupe.stop()
        raise


async def _drain_spool(spooler: Spooler, settings: Settings) -> None:
    """SIGTERM: settle the first publishes of held records while the drain pass in flight settles (never
    cancelled mid-send), then drain what Kafka takes within the bound (Settings.stop_bound_seconds)."""
    after = settings.spool_after_seconds
    try:
        await asyncio.gather(spooler.settle_all(timeout=after), spooler.drainer.stop(timeout=after))
        left = await spooler.drainer.drain(timeout=settings.spool_drain_seconds)
    except Exception as exc:  # the rest of the shutdown (flush, close) must still run
        logger.error("spool drain at shutdown failed: %s: %s; drained at the next start", type(exc).__name__, exc)
        return
    if left:
        logger.warning("%d record(s) left in the spool %s; drained at the next start", left, settings.spool_dir)


def _webhook_path(path: str) -> bool:
    return path == PATH or path.startswith(PREFIX)


class Upkeep:
    """The relay's work beside requests: the sources file's watch, parking's attendant, the drift checks.

    Each source's series exist from the start; after a reload they follow the file, the sources whose
    secrets changed have their parked requests verified again, and the drift checks follow the sources.
    """

    def __init__(self, relay: Relay, settings: Settings, webhook: WebhookEndpoint, clock: Callable[[], float]) -> None:
        self.relay = relay
        self.attendant = Attendant(relay)
        self.drift = DriftWatch(relay.sources, settings, relay.metrics)
        self._webhook = webhook
        self._clock = clock
        for source in relay.sources.current.by_path.values():
            relay.metrics.prime_source(source.name, len(source.secrets))
            relay.metrics.source_secrets_changed.labels(source.name).set(clock())
        _export_windows(relay.metrics, relay.sources.current)
        self._previous = relay.sources.current
        relay.sources.on_change(self._reloaded)

    def _reloaded(self, current: SourceSet, changed: list[Source]) -> None:
        _follow_sources(self.relay, self._previous, current, changed, self._clock())
        _export_windows(self.relay.metrics, current)
        self._previous = current
        self._webhook.forget_counts()
        self.attendant.secrets_changed(current, changed)
        self.drift.follow()

    async def start(self) -> None:
        await self.relay.parking.start()
        await self.relay.sources.start()
        self.attendant.start()
        self.drift.start()

    async def stop(self) -> None:
        await self.relay.sources.stop()
        await self.drift.stop()
        await self.attendant.stop()
        await self.relay.parking.stop()


def _export_windows(metrics: Metrics, current: SourceSet) -> None:
    """Each source's rotation window end as served: what `webhook rotate` waits for on every replica."""
    for source in current.by_path.values():
        until = source.rotation_window_until
        metrics.rotation_window_until.labels(source.name).set(until.timestamp() if until is not None else 0)


def _follow_sources(relay: Relay, before: SourceSet, after: SourceSet, changed: list[Source], now: float) -> None:
    metrics = relay.metrics
    names = {source.name for source in after.by_path.values()}
    for old in before.by_path.values():
        if old.name not in names:
            metrics.forget_source(old.name, len(old.secrets))
    for source in changed:
        old_source = before.by_name(source.name)
        if old_source is None:
            metrics.prime_source(source.name, len(source.secrets))
        else:
            metrics.resize_secrets(source.name, len(old_source.secrets), len(source.secrets))
        metrics.source_secrets_changed.labels(source.name).set(now)
    relay.forget_counts()


async def internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error handling %s %s", request.method, request.url.path, exc_info=exc)
    relay: Relay | None = getattr(request.state, "relay", None)
    if relay is not None:
        relay.metrics.requests.labels("unknown", "internal_error").inc()
    return ORJSONResponse({"status": "error", "reason": "internal_error"}, status_code=500)


def _summary(metrics: Metrics) -> str:
    counts: dict[str, float] = {}
    for metric in metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:  # primed series at 0 say nothing here
                counts[sample.labels["outcome"]] = sample.value
    return ", ".join(f"{name}={int(value)}" for name, value in sorted(counts.items())) or "no requests"
