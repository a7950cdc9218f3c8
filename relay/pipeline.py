"""One webhook, from raw bytes to a durable Kafka record: verify, parse, route, dedupe, publish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from relay import envelope, tracing
from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import (
    DedupeUnavailable,
    KafkaRefused,
    PublishPending,
    RelayError,
    RotationWindow,
    SignatureError,
    Unavailable,
)
from relay.metrics import Metrics
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable, Webhook, parse
from relay.mytpe.signatures import HeaderSource, SignedHeaders
from relay.settings import Settings
from relay.sources.config import Source, SourceSet, legacy
from relay.sources.factory import parking_from_settings
from relay.sources.parking import Parked, ParkingLot
from relay.sources.registry import SourceRegistry
from relay.spool.spooler import Spooled, Spooler
from relay.types import Ack, Claim, DedupeStore, Publisher

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)

RecordHeaders = list[tuple[str, bytes]]
T = TypeVar("T")
SOURCE_HEADER = "mytpe-relay-source"
"""The Kafka record header naming the source a record came through (family topics and DLQ)."""
KAFKA_REFUSED = "kafka_refused"
"""The DLQ `reason` of a verified delivery Kafka refused for good (RecordTooLarge, a policy, ...)."""
KAFKA_ERROR_HEADER = "kafka-error"
"""The DLQ record header naming the Kafka error of a `kafka_refused` delivery."""
REVERIFIED_HEADER = "mytpe-relay-reverified"
"""Present ("true") on a record relayed from parking, after its source's secrets changed."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: RecordHeaders


@dataclass(frozen=True, slots=True)
class Outcome:
    """A 200 answer: `accepted`, `duplicate` or `quarantined` (with the DLQ `reason`)."""

    status: str
    delivery_id: str
    reason: str | None = None
    ack: Ack | None = None
    spooled: bool = False
    """Durable in the local spool (RELAY_SPOOL_DIR), not yet acknowledged by Kafka: the drainer publishes it."""


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        publisher: Publisher,
        dedupe: DedupeStore,
        metrics: Metrics,
        sources: SourceRegistry | None = None,
        parking: ParkingLot | None = None,
        spooler: Spooler | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.tracer = tracer  # None: tracing is off (relay.tracing)
        self.publisher = publisher
        self.dedupe = dedupe
        self.metrics = metrics
        if sources is None:
            default = legacy(settings.secrets) if settings.secrets else None
            poll = settings.sources_poll_seconds
            sources = SourceRegistry(
                default=default, file=settings.sources_file, metrics=metrics, poll_seconds=poll, clock=clock
            )
        self.sources = sources
        self.parking: ParkingLot = parking if parking is not None else parking_from_settings(settings)
        self.router = settings.router()
        self.spooler = spooler
        self.clock = clock
        self._settling: set[asyncio.Task[None]] = set()
        self._active = 0
        metrics.in_flight.set_function(lambda: self._active)  # read when scraped: nothing per request
        # Hot-path metric children, resolved once (`labels()` takes a lock and builds a key per call).
        self._secret_matched: dict[tuple[str, int], Callable[[], None]] = {}
        self._published = {topic: metrics.published.labels(topic).inc for topic in self.router.topics()}
        # An in-process store answers in well under a microsecond: timing it would cost more than the
        # operation. Its `dedupe_duration` series stay at 0; a shared store (Redis) is timed per op.
        self._time_store = not isinstance(dedupe, MemoryDedupeStore)

    def forget_counts(self) -> None:
        """Drop the resolved per-source children (after a reload changed the sources)."""
        self._secret_matched = {}

    def admit(self) -> None:
        """Bound the deliveries held in memory: requests being handled plus records awaiting a late ack.

        Raises Unavailable("overloaded") at once beyond `max_in_flight`: a fast 503, never a queue.
        Each successful call must be paired with one `leave()`.
        """
        if self._active + len(self._settling) >= self.settings.max_in_flight:
            raise Unavailable("overloaded", "too many deliveries in flight", retry_after=1)
        self._active += 1

    def leave(self) -> None:
        self._active -= 1

    async def handle(self, headers: HeaderSource, body: bytes, source: Source) -> Outcome:
        """Raises HeaderError, SignatureError, RotationWindow or Unavailable; every other path ends in an Outcome."""
        now = self.clock()
        try:
            with tracing.child(self.tracer, "verify"):
                signed = self.verify(headers, body, source, now=now, window=self.settings.replay_window_seconds)
        except SignatureError as exc:
            if exc.reason == "bad_signature":
                await self._park(headers, body, source, now, exc)
            raise
        return await self.relay_signed(signed, headers, body, source, received_at=datetime.fromtimestamp(now, UTC))

    def verify(self, headers: HeaderSource, body: bytes, source: Source, *, now: float, window: int) -> SignedHeaders:
        """The parsed headers of a request signed by one of `source`'s secrets within `window` seconds of `now`."""
        signed = signatures.parse_headers(headers)
        index = signatures.verify(signed, body, source.keys, now=now, tolerance=window)
        count = self._secret_matched.get((source.name, index))
        if count is None:
            count = self._secret_matched[(source.name, index)] = self.metrics.secret_matches.labels(
                source.name, str(index)
            ).inc
        count()
        return signed

    async def _park(self, headers: HeaderSource, body: bytes, source: Source, now: float, exc: SignatureError) -> None:
        """Keep a fresh, well-formed request that no secret verifies; raise RotationWindow while one is open."""
        signed = signatures.parse_headers(headers)  # it parsed once already: the signature is what failed
        event = headers.getlist(signatures.EVENT)
        kind = event[0][:200] if event else ""
        entry = Parked(source.name, signed.delivery_id, signed.timestamp_text, signed.digest, kind, body, now)
        refused = await self.parking.park(entry)
        if refused is None:
            self.metrics.parked.labels(source.name).inc()
        else:
            self.metrics.parking_refused.labels(source.name, refused).inc()
        if source.rotating(now):
            raise RotationWindow(self.settings.rotation_retry_after_seconds) from exc

    async def reverify(self, source: Source) -> tuple[int, int]:
        """Verify `source`'s parked requests against its secrets now; relay those that pass, exactly once.

        Returns (relayed, waiting): `waiting` verified but could not be made durable now, and stay
        parked for the next pass. The rest stay parked unverified until they age out. A delivery is
        never published twice: it goes through the dedupe claim, as always.
        """
        relayed = waiting = 0
        settled: set[tuple[str, str, bytes]] = set()  # entries one attempt of which verified
        for entry in await self.parking.entries(source.name):
            if entry.key in settled:  # an entry lists each attempt: the first that verifies settles it
                continue
            headers = _ParkedHeaders(entry)
            try:  # its timestamp was inside the window when it arrived; only the signature is checked
                signed = self.verify(headers, entry.body, source, now=float(entry.timestamp_text), window=0)
            except RelayError:
                continue
            settled.add(entry.key)
            received_at = datetime.fromtimestamp(entry.received_at, UTC)
            try:
                with self._reverifying(entry) as span:
                    outcome = await self.relay_signed(
                        signed, headers, entry.body, source, received_at=received_at, reverified=True
                    )
                    if span is not None:
                        span.set_attribute("mytpe.outcome", outcome.status)
            except Unavailable as exc:
                logger.warning("parked delivery %s verified, not relayed yet (%s)", entry.delivery_id, exc.cause)
                waiting += 1
                continue
            except RelayError as exc:  # wrong_instance: authentic, but not this source's
                logger.warning("parked delivery %s verified, then refused: %s", entry.delivery_id, exc.reason)
            else:
                if outcome.status != "duplicate":  # another attempt of the same delivery got there first
                    relayed += 1
                    self.metrics.reverified.labels(source.name).inc()
            await self.parking.remove(entry)
        return relayed, waiting

    def _reverifying(self, entry: Parked) -> tracing.spans.Scope:
        """A trace of its own for a parked delivery relayed now: it is created here (its request's trace,
        if any, is not kept with it)."""
        if self.tracer is None:
            return tracing.NO_SPAN
        attributes = {"mytpe.source": entry.source, "mytpe.delivery_id": entry.delivery_id}
        return self.tracer.root("reverify parked delivery", attributes)

    async def relay_signed(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = False,
    ) -> Outcome:
        """Publish a verified delivery to its family topic, or keep it in the DLQ if it is unusable or
        Kafka refuses it for good (`kafka_refused`: too large for the topic, invalid, a policy).
        If the DLQ refuses it too, KafkaRefused is raised: a 503, nothing acknowledged."""
        try:
            delivery_id, record = self.build(signed, body, source, received_at=received_at, reverified=reverified)
        except Unusable as unusable:
            return await self.quarantine(signed, headers, body, source, unusable.reason, reverified=reverified)
        try:
            return await self.deliver(delivery_id, record, signed, source=source.name)
        except KafkaRefused as refused:  # its claim was released: the DLQ publish claims it again
            logger.warning("delivery %s refused by Kafka for good (%s); to the DLQ", delivery_id, refused.detail)
            return await self.quarantine(
                signed, headers, body, source, KAFKA_REFUSED, reverified=reverified, error=refused.detail
            )

    def build(
        self,
        signed: SignedHeaders,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = False,
        created_in: str | None = None,
    ) -> tuple[str, Record]:
        """The delivery id and the family-topic record of a verified body.

        The CloudEvent's `traceparent` is `created_in` (a replay keeps the one its record was created in),
        else the current span's; the record's `traceparent` header is the current span's (this hop's).

        Raises Unusable, or SignatureError(`wrong_instance`) when the source names an instance and the
        body's `data.instance.id` is another (or none).
        """
        webhook = parse(body, signed.delivery_id)
        if source.instance_id is not None and envelope.instance_id(webhook) != source.instance_id:
            raise SignatureError("wrong_instance", f"data.instance.id is not the one source {source.name} expects")
        destination = self.router.resolve(webhook)
        if self.tracer is not None:
            self.tracer.annotate(_event_attributes(webhook, source))
        value = envelope.encode(
            webhook,
            destination,
            signed_at=signed.timestamp,
            received_at=received_at,
            reverified=reverified,
            traceparent=created_in or tracing.traceparent(self.tracer),
        )
        record_headers: RecordHeaders = [
            ("content-type", envelope.CONTENT_TYPE),
            *_origin(source, reverified),
            *tracing.headers(self.tracer),
        ]
        return webhook.delivery_id, Record(destination.topic, destination.key.encode(), value, record_headers)

    async def quarantine(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        reason: str,
        *,
        reverified: bool = False,
        error: str = "",
    ) -> Outcome:
        """Keep a verified but unusable body in the DLQ, with what is needed to re-verify it later.
        `error`: the Kafka error that refused it for good (a `kafka-error` header)."""
        event = headers.getlist(signatures.EVENT)
        record_headers: RecordHeaders = [
            ("reason", reason.encode()),
            (signatures.DELIVERY_ID, signed.delivery_id.encode()),
            (signatures.TIMESTAMP, signed.timestamp_text.encode()),
            (signatures.SIGNATURE, b"sha256=" + signed.digest.hex().encode()),
            (signatures.EVENT, event[0].encode("utf-8", "replace")[:200] if event else b""),
            *_origin(source, reverified),
            *tracing.headers(self.tracer),
        ]
        if error:
            record_headers.append((KAFKA_ERROR_HEADER, error.encode()))
        record = Record(self.router.dlq, signed.delivery_id.encode(), body, record_headers)
        outcome = await self.deliver(signed.delivery_id, record, signed, reason, source=source.name)
        if outcome.status == "accepted":
            self.metrics.quarantined.labels(reason).inc()
            return Outcome("quarantined", signed.delivery_id, reason, outcome.ack, spooled=outcome.spooled)
        return outcome

    async def deliver(
        self,
        delivery_id: str,
        record: Record,
        signed: SignedHeaders,
        reason: str | None = None,
        *,
        key: str = "",
        source: str = "",
    ) -> Outcome:
        """Claim `key` (default: the delivery id), publish, then commit. A definite failure releases the
        claim so the retry goes through; a publish still pending in the producer keeps it until the
        producer settles the record."""
        key = key or delivery_id
        try:
            with tracing.child(self.tracer, "dedupe claim") as span:
                claim = await self._store("claim", self.dedupe.claim(key, wait=self.settings.inflight_wait_seconds))
                if span is not None:
                    span.set_attribute("mytpe.claim", claim.value)
        except DedupeUnavailable:
            if not self.settings.dedupe_fail_open:
                raise
            logger.warning("dedupe store down: publishing %s without dedupe (RELAY_DEDUPE_FAIL_OPEN)", delivery_id)
            claim = Claim.NEW
        if claim is Claim.DUPLICATE:
            self.metrics.duplicates.labels(source or "unknown").inc()
            return Outcome("duplicate", delivery_id, reason)
        started = time.perf_counter()
        publish = self.publisher.publish if self.spooler is None else self.spooler.publish
        sending = None if self.tracer is None else self.tracer.send(record.topic, delivery_id)
        try:
            with tracing.use(self.tracer, sending):  # a spool write is its child
                result = await publish(record.topic, record.key, record.value, record.headers)
        except PublishPending as pending:
            self._settle_later(key, pending, started, signed, sending)
            raise
        except BaseException as exc:
            tracing.end(sending, error=exc)
            await self._release(key)
            raise
        if isinstance(result, Spooled):  # durable on disk: a retry is a duplicate, the drainer publishes it
            tracing.end(sending, attributes={"mytpe.spooled": True})  # its drain has a span of its own
            await self._commit(key)
            return Outcome("accepted", delivery_id, reason, None, spooled=True)
        tracing.acked(sending, result.partition, result.offset)
        await self._committed(key, result, started, signed)
        return Outcome("accepted", delivery_id, reason, result)

    def _store(self, op: str, call: Awaitable[T]) -> Awaitable[T]:
        """One dedupe store operation, timed and counted by `op` (a shared store's; the memory store's as is)."""
        return self._timed(op, call) if self._time_store else call

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except DedupeUnavailable:
            self.metrics.dedupe_errors.labels(op).inc()
            raise
        finally:
            self.metrics.dedupe_duration.labels(op).observe(time.perf_counter() - started)

    async def _release(self, delivery_id: str) -> None:
        try:
            await self._store("release", self.dedupe.release(delivery_id))
        except DedupeUnavailable:
            logger.warning("could not release %s; its lease expires on its own", delivery_id)

    async def _commit(self, delivery_id: str) -> None:
        try:
            with tracing.child(self.tracer, "dedupe commit"):
                await self._store("commit", self.dedupe.commit(delivery_id))
        except DedupeUnavailable:  # the record is durable: answer 2xx; only a retry could duplicate it
            logger.warning("published %s but could not mark it done; a retry may publish it again", delivery_id)

    async def _committed(self, delivery_id: str, ack: Ack, started: float, signed: SignedHeaders) -> None:
        await self._commit(delivery_id)
        exemplar = None if self.tracer is None else self.tracer.exemplar()  # the trace of this duration
        self.metrics.publish_duration.observe(time.perf_counter() - started, exemplar)
        self.metrics.delivery_lag.observe(max(self.clock() - signed.timestamp, 0.0))
        count = self._published.get(ack.topic)
        if count is None:
            count = self._published[ack.topic] = self.metrics.published.labels(ack.topic).inc
        count()

    def _settle_later(
        self, delivery_id: str, pending: PublishPending, started: float, signed: SignedHeaders, sending: Span | None
    ) -> None:
        """Keep the claim until the producer settles the record: commit on a late ack, else release.
        The send span ends then too: at Kafka's acknowledgement, or its failure."""
        task = asyncio.create_task(self._settle(delivery_id, pending, started, signed, sending))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(
        self, delivery_id: str, pending: PublishPending, started: float, signed: SignedHeaders, sending: Span | None
    ) -> None:
        try:
            # A shared store's claim is a lease: hold it as long as the producer may hold the record.
            lease = self.settings.kafka_delivery_timeout_seconds + self.settings.publish_timeout_seconds
            await self._store("extend", self.dedupe.extend(delivery_id, lease))
        except DedupeUnavailable:
            logger.warning("could not extend the claim on %s while Kafka settles it", delivery_id)
        try:
            ack = await pending.outcome
        except asyncio.CancelledError as exc:
            tracing.end(sending, error=exc)
            await self._release(delivery_id)
            raise
        except Exception as exc:
            tracing.end(sending, error=exc)
            await self._release(delivery_id)
            logger.warning("delivery %s was not published (%s); its claim is released", delivery_id, exc)
            return
        tracing.acked(sending, ack.partition, ack.offset)
        await self._committed(delivery_id, ack, started, signed)
        logger.info(
            "delivery %s acknowledged late by Kafka; a retry will be answered duplicate",
            delivery_id,
            extra={"delivery_id": delivery_id, "topic": ack.topic, "partition": ack.partition, "offset": ack.offset},
        )

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for late acknowledgements (after the producer flushed); cancel the rest."""
        tasks = list(self._settling)
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(pending)


def _event_attributes(webhook: Webhook, source: Source) -> dict[str, str]:
    """The CloudEvent the current span creates, as OpenTelemetry's CloudEvents conventions name it."""
    return {
        "cloudevents.event_id": webhook.delivery_id,
        "cloudevents.event_type": envelope.TYPE_PREFIX + webhook.event,
        "cloudevents.event_source": envelope.source(webhook),
        "cloudevents.event_spec_version": "1.0",
        "mytpe.delivery_id": webhook.delivery_id,
        "mytpe.source": source.name,
    }


def _origin(source: Source, reverified: bool) -> RecordHeaders:
    headers: RecordHeaders = [(SOURCE_HEADER, source.name.encode())]
    if reverified:
        headers.append((REVERIFIED_HEADER, b"true"))
    return headers


class _ParkedHeaders:
    """A parked request's MyTPE headers, as the verification and the DLQ record read them."""

    __slots__ = ("_values",)

    def __init__(self, entry: Parked) -> None:
        self._values = {
            signatures.SIGNATURE: "sha256=" + entry.digest.hex(),
            signatures.TIMESTAMP: entry.timestamp_text,
            signatures.DELIVERY_ID: entry.delivery_id,
            signatures.EVENT: entry.event,
        }

    def getlist(self, key: str) -> list[str]:
        value = self._values.get(key.lower())
        return [value] if value else []


class Attendant:
    """Looks after parking: re-verifies a source's parked requests when its secrets change, retries those
    that verified while Kafka could not take them, expires the old, and keeps the parking gauges."""

    def __init__(self, relay: Relay, *, interval: float = 5.0) -> None:
        self.relay = relay
        self._interval = interval
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def secrets_changed(self, current: SourceSet, changed: list[Source]) -> None:
        self._pending.update(source.name for source in changed)
        self._wake.set()

    def start(self) -> None:
        """Start looking after parking. Every source is verified again once at start: a shared (Redis)
        parking may hold requests that a secret installed while no replica ran now verifies."""
        self._pending.update(source.name for source in self.relay.sources.current.by_path.values())
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="parking-attendant")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.pass_once()
            except Exception as exc:  # the store did not answer (Redis down, an ACL): the next pass tries again
                logger.warning("parking pass failed, parked requests stay parked: %s: %s", type(exc).__name__, exc)

    async def pass_once(self) -> None:
        relay = self.relay
        for name, count in (await relay.parking.expire(relay.clock())).items():
            relay.metrics.parked_expired.labels(name).inc(count)
        for name, count in relay.parking.evicted().items():
            relay.metrics.parked_evicted.labels(name).inc(count)
        for name in sorted(self._pending):
            source = relay.sources.current.by_name(name)
            relayed, waiting = (0, 0) if source is None else await relay.reverify(source)
            if not waiting:
                self._pending.discard(name)
            if relayed or waiting:
                logger.warning(
                    "source %s: %d parked delivery(ies) verified with new secrets and relayed, %d waiting for Kafka",
                    name,
                    relayed,
                    waiting,
                    extra={"source": name},
                )
        usage = await relay.parking.usage()
        relay.metrics.parked_entries.set(usage.entries)
        relay.metrics.parked_bytes.set(usage.bytes)
        oldest = usage.oldest_received_at
        relay.metrics.parked_oldest_age.set(0 if oldest is None else max(relay.clock() - oldest, 0.0))
