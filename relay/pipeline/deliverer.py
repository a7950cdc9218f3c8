"""The deliverer: admission, then claim, publish, commit or release; a publish still pending in the
producer is settled late (relay.pipeline.late_acks: commit on its ack, else release), and drained at
shutdown. A shared store's commit is sent after the answer, and drained at shutdown too."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relay import tracing
from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import DedupeUnavailable, PublishPending, Unavailable
from relay.mytpe.signatures import SignedHeaders
from relay.pipeline.commits import Commits
from relay.pipeline.late_acks import LateAcks, Refused
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.records import Outcome, Record
from relay.pipeline.store_timing import StoreTiming
from relay.settings import Settings
from relay.spool.spooler import Spooled, Spooler
from relay.types import Ack, Claim, DedupeStore, Publisher, SendsCommits

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)

_SPOOLED = {"mytpe.spooled": True}


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        publisher: Publisher,
        dedupe: DedupeStore,
        metrics: DeliveryMetrics,
        topics: list[str],
        spooler: Spooler | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._dedupe = dedupe
        self._metrics = metrics
        self._spooler = spooler
        self._clock = clock
        self._tracer = tracer  # None: tracing is off (relay.tracing)
        self._active = 0
        metrics.in_flight.set_function(lambda: self._active)  # read when scraped: nothing per request
        # Hot-path metric children, resolved once (`labels()` takes a lock and builds a key per call).
        self._published = {topic: metrics.published.labels(topic).inc for topic in topics}
        # A shared store (Redis) is timed per operation, and its commit is sent after the answer (`_mark_done`).
        shared = not isinstance(dedupe, MemoryDedupeStore)
        self._store = StoreTiming(metrics, shared=shared)
        self._commits = Commits(dedupe, metrics, tracer) if shared and isinstance(dedupe, SendsCommits) else None
        self._late = LateAcks(settings, dedupe, self._store, committed=self._committed, release=self._release)

    def admit(self) -> None:
        """Bound the deliveries held in memory: requests being handled plus records awaiting a late ack.

        A commit on its way to a shared store does not count: new claims queue behind it, in the
        requests this counts (docs/guarantees.md §6).
        Raises Unavailable("overloaded") at once beyond `max_in_flight`: a fast 503, never a queue.
        Each successful call must be paired with one `leave()`.
        """
        if self._active + len(self._late) >= self._settings.max_in_flight:
            raise Unavailable("overloaded", "too many deliveries in flight", retry_after=1)
        self._active += 1

    def leave(self) -> None:
        self._active -= 1

    async def deliver(
        self,
        delivery_id: str,
        record: Record,
        signed: SignedHeaders,
        reason: str | None = None,
        *,
        key: str = "",
        source: str = "",
        quarantined: str | None = None,
        on_refused: Refused | None = None,
    ) -> Outcome:
        """Claim `key` (default: the delivery id), publish, then commit. A definite failure releases the
        claim so the retry goes through; a publish still pending in the producer keeps it until the
        producer settles the record. A shared store's commit is sent, not awaited (`_mark_done`).
        `quarantined`: the DLQ record's reason; a late acknowledgement counts it (an answer in time: the caller).
        `on_refused`: a pending publish Kafka refuses for good is given to it (LateAcks)."""
        key = key or delivery_id
        # A shared store's claim is timed here, not in a coroutine of StoreTiming's; a memory store's is not timed.
        asked = time.perf_counter() if self._store.shared else 0.0
        try:
            claiming = self._dedupe.claim(key, wait=self._settings.inflight_wait_seconds)
            if self._tracer is None or not self._tracer.sampled():  # off: no tracing call; unsampled: one
                claim = await claiming
            else:
                claim = await self._traced_claim(self._tracer, claiming, key)
        except DedupeUnavailable as exc:
            claim = self._unclaimed(delivery_id, exc)
        finally:
            if self._store.shared:
                self._store.took("claim", asked)
        if claim is Claim.DUPLICATE:
            self._metrics.duplicates.labels(source or "unknown").inc()
            return Outcome("duplicate", delivery_id, reason)
        started = time.perf_counter()
        publish = self._publisher.publish if self._spooler is None else self._spooler.publish
        sending = None
        try:
            sending = self._sending(record.topic, delivery_id)  # in here: a tracer that raises releases the claim too
            if self._tracer is None or sending is None:
                result = await publish(record.topic, record.key, record.value, record.headers)
            else:
                with self._tracer.use(sending):  # a spool write is its child
                    result = await publish(record.topic, record.key, record.value, record.headers)
        except PublishPending as pending:
            counted = None if quarantined is None else self._metrics.quarantined.labels(quarantined).inc
            self._late.settle(key, pending, started, signed, sending, on_ack=counted, on_refused=on_refused)
            raise
        except BaseException as exc:
            tracing.end(sending, error=exc)
            await self._release(key)
            raise
        if isinstance(result, Spooled):  # durable on disk: a retry is a duplicate, the drainer publishes it
            tracing.end(sending, attributes=_SPOOLED)  # its drain has a span of its own
            await self._mark_done(key)
            return Outcome("accepted", delivery_id, reason, None, spooled=True)
        if sending is not None:
            tracing.acked(sending, result.partition, result.offset)  # the send span ends at Kafka's ack
        await self._committed(key, result, started, signed)
        return Outcome("accepted", delivery_id, reason, result)

    async def _traced_claim(self, tracer: Tracer, claiming: Awaitable[Claim], key: str) -> Claim:
        """The claim in its span. A span that fails to end after a new claim releases it (else held for good)."""
        claim = None
        try:
            with tracer.child("dedupe claim") as span:
                claim = await claiming
                span.set_attribute("mytpe.claim", claim.value)
                return claim
        except BaseException:
            if claim is Claim.NEW:
                await self._release(key)
            raise

    def _sending(self, topic: str, delivery_id: str) -> Span | None:
        """A PRODUCER span, when the request is sampled: else None, and the record carries the request's context."""
        return None if self._tracer is None or not self._tracer.sampled() else self._tracer.send(topic, delivery_id)

    def _unclaimed(self, delivery_id: str, error: DedupeUnavailable) -> Claim:
        """The claim failed: counted, then raised again, or, failing open, the delivery goes on unclaimed."""
        self._store.failed("claim")
        if not self._settings.dedupe_fail_open:
            raise error
        logger.warning("dedupe store down: publishing %s without dedupe (RELAY_DEDUPE_FAIL_OPEN)", delivery_id)
        return Claim.NEW

    async def _release(self, delivery_id: str) -> bool:
        """Release the claim; whether the store did. A store that did not answer, or had stopped, is said and
        counted here, not raised in place of the failure that made the deliverer release."""
        try:
            await self._store("release", self._dedupe.release(delivery_id))
        except Unavailable as exc:
            if not isinstance(exc, DedupeUnavailable):  # the store had stopped (else counted by StoreTiming)
                self._metrics.dedupe_errors.labels("release").inc()
            logger.warning("could not release %s; its lease expires on its own", delivery_id)
            return False
        return True

    async def _mark_done(self, delivery_id: str) -> None:
        """Commit: awaited in memory (it is immediate); sent after the answer to a shared store
        (relay.pipeline.commits), and awaited by `drain` before the store stops."""
        if self._commits is not None:
            self._commits.send(delivery_id)
        else:
            await self._commit(delivery_id)

    async def _commit(self, delivery_id: str) -> None:
        try:
            if self._tracer is None or not self._tracer.sampled():
                await self._store("commit", self._dedupe.commit(delivery_id))
            else:
                with self._tracer.child("dedupe commit"):
                    await self._store("commit", self._dedupe.commit(delivery_id))
        except Unavailable as exc:  # the record is durable: the 2xx stands; only a retry could duplicate it
            if not isinstance(exc, DedupeUnavailable):  # the store had stopped (else counted by StoreTiming)
                self._metrics.dedupe_errors.labels("commit").inc()
            logger.warning("published %s but could not mark it done; a retry may publish it again", delivery_id)

    async def _committed(
        self, delivery_id: str, ack: Ack, started: float, signed: SignedHeaders, *, awaited: bool = False
    ) -> None:
        """Timed, counted and marked done; `awaited`: the commit is waited for, a shared store's too."""
        # the trace of this duration, if sampled
        exemplar = None if self._tracer is None or not self._tracer.sampled() else self._tracer.exemplar()
        self._metrics.publish_duration.observe(time.perf_counter() - started, exemplar)
        self._metrics.delivery_lag.observe(max(self._clock() - signed.timestamp, 0.0))
        count = self._published.get(ack.topic)
        if count is None:
            count = self._published[ack.topic] = self._metrics.published.labels(ack.topic).inc
        count()  # Kafka has it: counted before the commit, which the drain may cut (LateAcks)
        await (self._commit(delivery_id) if awaited else self._mark_done(delivery_id))

    async def drain(self, timeout: float) -> int:
        """Wait for late acknowledgements (after the producer flushed), then for the commits they and
        earlier answers left on their way, all within `timeout`; cancel the rest. Those given up on then
        release their claims (or commit, when Kafka acknowledged meanwhile) within STORE_CLEANUP_SECONDS
        more (LateAcks.finish). Returns how many late acknowledgements the drain gave up on, and says it. A
        cancelled commit or release may have reached Redis (else: §3's lease)."""
        deadline = time.monotonic() + timeout
        abandoned = await self._late.finish(timeout)
        unsure = 0 if self._commits is None else await self._commits.finish(max(deadline - time.monotonic(), 0.0))
        if abandoned:  # said here, for every caller (the server's shutdown, `replay`)
            logger.warning(
                "%d late acknowledgement(s) given up on at the drain (released, or committed if acked meanwhile,"
                " unless a line says that was cut)",
                abandoned,
            )
        if unsure:
            logger.warning("%d published delivery(ies) possibly not marked done at shutdown; leases expire", unsure)
        return abandoned
