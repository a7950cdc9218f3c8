"""One webhook, from raw bytes to a durable Kafka record: verify, parse, route, dedupe, publish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from relay import envelope
from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import DedupeUnavailable, Unavailable
from relay.kafka.publisher import PublishPending
from relay.metrics import Metrics
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable, parse
from relay.mytpe.signatures import HeaderSource, SignedHeaders
from relay.settings import Settings
from relay.types import Ack, Claim, DedupeStore, Publisher

logger = logging.getLogger(__name__)

RecordHeaders = list[tuple[str, bytes]]
T = TypeVar("T")


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


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        publisher: Publisher,
        dedupe: DedupeStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.dedupe = dedupe
        self.metrics = metrics
        self.router = settings.router()
        self._secrets = [secret.reveal().encode("utf-8") for secret in settings.secrets]
        self._clock = clock
        self._settling: set[asyncio.Task[None]] = set()
        self._active = 0
        metrics.in_flight.set_function(lambda: self._active)  # read when scraped: nothing per request
        # Hot-path metric children, resolved once (`labels()` takes a lock and builds a key per call).
        self._secret_matched = [metrics.secret_matches.labels(str(i)).inc for i in range(len(self._secrets))]
        self._published = {topic: metrics.published.labels(topic).inc for topic in self.router.topics()}
        # An in-process store answers in well under a microsecond: timing it would cost more than the
        # operation. Its `dedupe_duration` series stay at 0; a shared store (Redis) is timed per op.
        self._time_store = not isinstance(dedupe, MemoryDedupeStore)

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

    async def handle(self, headers: HeaderSource, body: bytes) -> Outcome:
        """Raises HeaderError, SignatureError or Unavailable; every other path ends in an Outcome."""
        now = self._clock()
        signed = self.verify(headers, body, now=now, window=self.settings.replay_window_seconds)
        return await self.relay_signed(signed, headers, body, received_at=datetime.fromtimestamp(now, UTC))

    def verify(self, headers: HeaderSource, body: bytes, *, now: float, window: int) -> SignedHeaders:
        """The parsed headers of a request signed by one of the secrets within `window` seconds of `now`."""
        signed = signatures.parse_headers(headers)
        index = signatures.verify(signed, body, self._secrets, now=now, tolerance=window)
        self._secret_matched[index]()
        return signed

    async def relay_signed(
        self, signed: SignedHeaders, headers: HeaderSource, body: bytes, *, received_at: datetime
    ) -> Outcome:
        """Publish a verified delivery to its family topic, or keep it in the DLQ if it is unusable."""
        try:
            delivery_id, record = self.build(signed, body, received_at=received_at)
        except Unusable as unusable:
            return await self.quarantine(signed, headers, body, unusable.reason)
        return await self.deliver(delivery_id, record, signed)

    def build(self, signed: SignedHeaders, body: bytes, *, received_at: datetime) -> tuple[str, Record]:
        """The delivery id and the family-topic record of a verified body. Raises Unusable."""
        webhook = parse(body, signed.delivery_id)
        destination = self.router.resolve(webhook)
        value = envelope.encode(webhook, destination, signed_at=signed.timestamp, received_at=received_at)
        record_headers: RecordHeaders = [("content-type", envelope.CONTENT_TYPE)]
        return webhook.delivery_id, Record(destination.topic, destination.key.encode(), value, record_headers)

    async def quarantine(self, signed: SignedHeaders, headers: HeaderSource, body: bytes, reason: str) -> Outcome:
        """Keep a verified but unusable body in the DLQ, with what is needed to re-verify it later."""
        event = headers.getlist(signatures.EVENT)
        record_headers: RecordHeaders = [
            ("reason", reason.encode()),
            (signatures.DELIVERY_ID, signed.delivery_id.encode()),
            (signatures.TIMESTAMP, signed.timestamp_text.encode()),
            (signatures.SIGNATURE, b"sha256=" + signed.digest.hex().encode()),
            (signatures.EVENT, event[0].encode("utf-8", "replace")[:200] if event else b""),
        ]
        record = Record(self.router.dlq, signed.delivery_id.encode(), body, record_headers)
        outcome = await self.deliver(signed.delivery_id, record, signed, reason)
        if outcome.status == "accepted":
            self.metrics.quarantined.labels(reason).inc()
            return Outcome("quarantined", signed.delivery_id, reason, outcome.ack)
        return outcome

    async def deliver(
        self, delivery_id: str, record: Record, signed: SignedHeaders, reason: str | None = None, *, key: str = ""
    ) -> Outcome:
        """Claim `key` (default: the delivery id), publish, then commit. A definite failure releases the
        claim so the retry goes through; a publish still pending in the producer keeps it until the
        producer settles the record."""
        key = key or delivery_id
        try:
            claim = await self._store("claim", self.dedupe.claim(key, wait=self.settings.inflight_wait_seconds))
        except DedupeUnavailable:
            if not self.settings.dedupe_fail_open:
                raise
            logger.warning("dedupe store down: publishing %s without dedupe (RELAY_DEDUPE_FAIL_OPEN)", delivery_id)
            claim = Claim.NEW
        if claim is Claim.DUPLICATE:
            self.metrics.duplicates.inc()
            return Outcome("duplicate", delivery_id, reason)
        started = time.perf_counter()
        try:
            ack = await self.publisher.publish(record.topic, record.key, record.value, record.headers)
        except PublishPending as pending:
            self._settle_later(key, pending, started, signed)
            raise
        except BaseException:
            await self._release(key)
            raise
        await self._committed(key, ack, started, signed)
        return Outcome("accepted", delivery_id, reason, ack)

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

    async def _committed(self, delivery_id: str, ack: Ack, started: float, signed: SignedHeaders) -> None:
        try:
            await self._store("commit", self.dedupe.commit(delivery_id))
        except DedupeUnavailable:  # the record is durable: answer 2xx; only a retry could duplicate it
            logger.warning("published %s but could not mark it done; a retry may publish it again", delivery_id)
        self.metrics.publish_duration.observe(time.perf_counter() - started)
        self.metrics.delivery_lag.observe(max(self._clock() - signed.timestamp, 0.0))
        count = self._published.get(ack.topic)
        if count is None:
            count = self._published[ack.topic] = self.metrics.published.labels(ack.topic).inc
        count()

    def _settle_later(self, delivery_id: str, pending: PublishPending, started: float, signed: SignedHeaders) -> None:
        """Keep the claim until the producer settles the record: commit on a late ack, else release."""
        task = asyncio.create_task(self._settle(delivery_id, pending, started, signed))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, delivery_id: str, pending: PublishPending, started: float, signed: SignedHeaders) -> None:
        try:
            # A shared store's claim is a lease: hold it as long as the producer may hold the record.
            lease = self.settings.kafka_delivery_timeout_seconds + self.settings.publish_timeout_seconds
            await self._store("extend", self.dedupe.extend(delivery_id, lease))
        except DedupeUnavailable:
            logger.warning("could not extend the claim on %s while Kafka settles it", delivery_id)
        try:
            ack = await pending.outcome
        except asyncio.CancelledError:
            await self._release(delivery_id)
            raise
        except Exception as exc:
            await self._release(delivery_id)
            logger.warning("delivery %s was not published (%s); its claim is released", delivery_id, exc)
            return
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
