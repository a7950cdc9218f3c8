"""Kafka publishing with an idempotent aiokafka producer (`acks=all`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)

from relay.errors import KafkaDenied, KafkaRefused, PublishPending, StartupError, Unavailable
from relay.kafka.batching import BATCH_BYTES, Batch, Batcher
from relay.kafka.security import PRODUCER_REFUSED, client_options, diagnose, fingerprint, refused
from relay.kafka.topics import TopicState, describe
from relay.settings import KafkaSecurity, Settings
from relay.types import Ack

logger = logging.getLogger(__name__)

# Errors after which an idempotent aiokafka producer never sends successfully again. An authorization
# error on InitProducerId kills its sender task: every later send re-raises it until the producer is rebuilt.
_BROKEN_PRODUCER = (
    ClusterAuthorizationFailedError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)

Headers = Sequence[tuple[str, bytes]]

# Produce errors that no retry can get past (the record is the problem): message too large (10), record
# list too large (18), invalid topic (17), policy violation (44), by errno. Not CORRUPT_MESSAGE (2): it is
# retriable, as in Java. INVALID_RECORD (87) has no class in aiokafka 0.14 and arrives as UnknownError
# (errno -1): see `_why`. An ACL (29) is KafkaDenied: the operator can fix it.
_REFUSED_FOR_GOOD = frozenset({10, 17, 18, 44})


# Produce errors about a whole batch as much as about one of its records: the broker checks
# `max.message.bytes` per batch (10, 18), and an invalid record (87, read as UnknownError, -1) fails its
# batch. aiokafka fails the whole batch (Java splits it): each of its records is sent again alone, and
# only a refusal of a record alone is for good.
_BATCH_REFUSALS = frozenset({-1, 10, 18})


@dataclass(frozen=True, slots=True)
class Resend:
    """One record of a refused batch, to be published again in a batch of its own."""

    publisher: KafkaPublisher
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]

    async def __call__(self) -> Ack:
        return await self.publisher._publish(self.topic, self.key, self.value, self.headers, alone=True)


def _refused_with_others(exc: BaseException | None, batch: Batch) -> bool:
    """The batch was refused in a way that may be about another of its records."""
    count: int = batch.builder.record_count()
    return isinstance(exc, KafkaError) and getattr(exc, "errno", None) in _BATCH_REFUSALS and count > 1


@dataclass(frozen=True, slots=True)
class Cluster:
    brokers: int
    topics: frozenset[str]


class KafkaUnreachable(StartupError):
    """Kafka did not answer (as opposed to refusing): a relay with a spool can start without it."""


class KafkaPublisher:
    """Owns one producer; created and started inside the running loop (by the app's lifespan)."""

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str],
        publish_timeout: float,
        delivery_timeout: float = 120.0,
        client_id: str = "mytpe-relay",
        security: KafkaSecurity | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._bootstrap = list(bootstrap_servers)
        self._security = security or KafkaSecurity()
        self._topics = list(topics)  # those readiness checks for an authorization refusal
        self._timeout = publish_timeout
        self._delivery_timeout = max(delivery_timeout, publish_timeout)
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._batcher: Batcher | None = None  # the producer's, swapped with it
        self._replacing: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._material = b""  # fingerprint of the credential files the current producer was built with
        self.replacements = 0
        self.on_replaced: Callable[[], None] = _nothing

    @classmethod
    def from_settings(cls, settings: Settings, *, publish_timeout: float | None = None) -> KafkaPublisher:
        """`publish_timeout` overrides RELAY_PUBLISH_TIMEOUT_SECONDS (a spool's shorter bound)."""
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            publish_timeout=publish_timeout or settings.publish_timeout_seconds,
            delivery_timeout=settings.kafka_delivery_timeout_seconds,
            security=settings.kafka_security,
            topics=settings.router().topics(),
        )

    def credentials_changed(self) -> bool:
        """True when the credential files on disk differ from those the running producer was built with: a
        renewed password or certificate is used after a restart (docs/operations.md)."""
        return bool(self._material) and self._fingerprint() != self._material

    def _fingerprint(self) -> bytes:
        return fingerprint(self._security) if self._security.files() else b""

    def _new_producer(self) -> AIOKafkaProducer:
        # request_timeout_ms is also aiokafka's batch expiry. A batch that expires after it was sent
        # may still have been written, and its expiry leaves a sequence gap that breaks the idempotent
        # producer. So it is long (like Java's delivery.timeout.ms): across an outage the producer
        # keeps retrying, the broker dedupes the resends, and we answer within our own shorter bound.
        # Records reach it in batches (relay.batching) that are closed when submitted: no linger applies.
        options = client_options(self._security)
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            max_batch_size=BATCH_BYTES,
            request_timeout_ms=int(self._delivery_timeout * 1000),
            retry_backoff_ms=100,
            **options,
        )

    async def start(self, *, timeout: float, background: bool = False) -> None:
        """Connect and fetch metadata within `timeout` seconds. Raises StartupError.

        `background` (a relay with a spool): an unreachable Kafka is not fatal; the producer keeps
        trying in the background, publishes fail meanwhile (and are spooled). A refusal still raises.
        """
        try:
            await self._start_once(timeout)
        except KafkaUnreachable as exc:
            if not background:
                raise
            logger.warning("%s; starting without Kafka (the spool takes the records), retrying", exc)
            self._starting = asyncio.create_task(self._start_later(timeout), context=contextvars.Context())

    async def _start_once(self, timeout: float) -> None:
        material = self._fingerprint()  # read before the files are, so a change in between shows as changed
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except ClusterAuthorizationFailedError as exc:
            await _quiet_stop(producer)
            raise StartupError(
                f"Kafka at {','.join(self._bootstrap)}: {refused(PRODUCER_REFUSED, self._security)}"
            ) from exc
        except (KafkaError, OSError, TimeoutError) as exc:
            await _quiet_stop(producer)
            raise await self._why_not(timeout) from exc
        self._producer, self._batcher = producer, Batcher(producer, bound=self._timeout)
        self._material = material
        logger.info("kafka producer started (bootstrap %s)", ",".join(self._bootstrap))

    async def _start_later(self, timeout: float) -> None:
        while self._producer is None:
            await asyncio.sleep(2.0)
            with contextlib.suppress(StartupError):
                await self._start_once(timeout)

    async def _why_not(self, timeout: float) -> StartupError:
        """The startup failure in one line: what the broker refused, or that it did not answer in time."""
        servers = ",".join(self._bootstrap)
        cause = await diagnose(self._bootstrap, self._security)
        if cause is None or cause.startswith(("connection refused", "no answer")):
            detail = f": {cause}" if cause else ""
            return KafkaUnreachable(f"Kafka at {servers} not reachable within {timeout:g}s{detail}")
        return StartupError(f"Kafka at {servers}: {cause}")

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Flush what is pending and close. Idempotent."""
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        replacing = self._replacing  # settle a replacement first, so none is installed after this
        if replacing is not None:
            replacing.cancel()
            await asyncio.gather(replacing, return_exceptions=True)
        producer, batcher = self._producer, self._batcher
        self._producer = self._batcher = None
        if producer is None or batcher is None:
            return
        try:
            await asyncio.wait_for(_flush_and_stop(producer, batcher), timeout)
        except TimeoutError:
            logger.warning("kafka producer did not flush within %.1fs", timeout)
            batcher.close()
        logger.info("kafka producer stopped")

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers) -> Ack:
        """Send one record and wait for the broker's `acks=all` acknowledgement. A record whose batch of
        several was refused for its size (or an UnknownError) is sent again alone, with a bound of its own.

        Args:
            topic: destination topic.
            key: record key (the entity id).
            value: record value (the encoded CloudEvent, or the raw body for the DLQ).
            headers: record headers.

        Returns:
            Where the record was written.

        Raises:
            PublishPending: no acknowledgement within the bound, but the record may still land;
                the caller keeps its dedupe claim until `outcome` settles.
            Unavailable: the record was not written (`kafka_timeout`, `kafka_error`,
                `shutting_down`); the caller releases its dedupe claim.
        """
        return await self._publish(topic, key, value, list(headers), alone=False)

    async def _publish(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, alone: bool
    ) -> Ack:
        """`publish()`; `alone`: in a batch of its own (the resend of a record whose batch was refused)."""
        producer, batcher = self._producer, self._batcher
        if producer is None or batcher is None:
            raise Unavailable("shutting_down", "the producer is stopped")
        partition = batcher.partition(topic, key)
        deadline = None
        try:
            if partition is None:  # the topic's first record: its metadata and its ack share one bound
                deadline = asyncio.get_running_loop().time() + self._timeout
                async with asyncio.timeout_at(deadline):
                    partition = await _first_partition(producer, batcher, topic, key)
            # An append to the partition's open batch; nothing is sent if this raises.
            batch, index = batcher.append(topic, partition, key, value, headers, alone=alone)
        except (TimeoutError, KafkaTimeoutError) as exc:
            raise Unavailable("kafka_timeout", "no metadata within the bound") from exc
        except KafkaError as exc:
            raise _unsent(exc) from exc
        # Woken when the batch settles or its bound passes: one timer per batch, none per request.
        if deadline is None:
            await batch.waiter()
        else:
            with contextlib.suppress(TimeoutError):  # what the record became is read from the batch below
                async with asyncio.timeout_at(deadline):
                    await batch.waiter()
        done = batch.future
        if done.done() and done.exception() is None:
            return Ack(topic, partition, done.result() + index)
        where = Ack(topic, partition, index)
        again = None if alone else Resend(self, topic, key, value, headers)
        if not done.done():  # the record stays in the producer, which may still write it
            raise PublishPending(self._settled(producer, batch, where, again), self._timeout)
        if again is not None and _refused_with_others(done.exception(), batch):
            return await again()  # a fresh bound of its own; PublishPending reaches the caller as usual
        return await self._settled(producer, batch, where, None)

    async def _settled(self, producer: AIOKafkaProducer, batch: Batch, where: Ack, again: Resend | None) -> Ack:
        """The acknowledgement of an appended record (`where.offset` is its index in the batch).

        A batch of several records refused for its size or an invalid record is no verdict on this
        record: it is sent again alone (`again`), and only a refusal of it alone is for good.
        Raises Unavailable if the producer gave up on it.
        """
        try:
            base_offset = await asyncio.shield(batch.future)
        except KafkaError as exc:
            if again is None or not _refused_with_others(exc, batch):
                raise self._why(producer, exc) from exc
            try:
                return await again()
            except PublishPending as pending:
                return await pending.outcome
        return Ack(where.topic, where.partition, base_offset + where.offset)

    def _why(self, producer: AIOKafkaProducer, exc: KafkaError) -> Unavailable:
        """What a failed batch means for its records (and a broken producer is replaced)."""
        if isinstance(exc, ProducerClosed):
            return Unavailable("shutting_down", "the producer closed before the acknowledgement")
        if isinstance(exc, _BROKEN_PRODUCER):
            self._replace(producer, exc)
            return Unavailable("kafka_error", type(exc).__name__)
        if isinstance(exc, UnknownError):  # a record alone: possibly INVALID_RECORD; Java does not retry it either
            return KafkaRefused(type(exc).__name__)
        return _failed(exc)

    def _replace(self, broken: AIOKafkaProducer, cause: Exception) -> None:
        """Swap in a new producer (new producer id), once per broken producer.

        aiokafka cannot resynchronise an idempotent producer's sequence numbers after records were
        lost in an outage (aio-libs/aiokafka#1017): every later send fails. The Java client bumps the
        epoch; we start a fresh producer instead. The broken one is closed; its unsent records fail,
        which releases their dedupe claims so the senders' retries go through. Not in the request's trace."""
        if self._producer is not broken or self._replacing is not None:
            return
        logger.warning("kafka producer broken (%s); replacing it", type(cause).__name__)
        self._replacing = asyncio.create_task(self._swap(broken), context=contextvars.Context())

    async def _swap(self, broken: AIOKafkaProducer) -> None:
        material = self._fingerprint()
        fresh = self._new_producer()
        installed = False
        try:
            await asyncio.wait_for(fresh.start(), self._timeout)
            retired = self._batcher
            self._producer, self._batcher = fresh, Batcher(fresh, bound=self._timeout)
            self._material = material
            installed = True
            if retired is not None:  # its unsent batches fail, which releases their claims for the retries
                retired.close(KafkaError("producer replaced before this batch was sent"))
            self.replacements += 1
            self.on_replaced()
            logger.warning("kafka producer replaced (%d so far)", self.replacements)
            await _quiet_stop(broken)
        except (KafkaError, OSError, TimeoutError):
            logger.warning("replacement producer could not start; the next failure retries")
        finally:
            if not installed:  # also when cancelled by stop(): never leave a half-started producer
                await _quiet_stop(fresh)
            self._replacing = None

    async def ping(self, *, timeout: float = 2.0) -> bool:
        """True when a metadata request for the relay's topics succeeds within `timeout` and refuses none of
        them: an ACL removed at runtime makes the relay not ready, as well as answering 503."""
        states = await self.topic_states(self._topics, timeout=timeout)
        return states is not None and not any(s.problem is TopicAuthorizationFailedError for s in states.values())

    async def topic_states(self, topics: Sequence[str], *, timeout: float = 2.0) -> dict[str, TopicState] | None:
        """Each topic's metadata (creating none), or None when the cluster does not answer within `timeout`."""
        producer = self._producer
        if producer is None:
            return None
        try:
            return await asyncio.wait_for(describe(producer.client, topics), timeout)
        except (KafkaError, OSError, TimeoutError):
            return None

    async def describe(self, *, timeout: float = 2.0) -> Cluster | None:
        """Brokers and topics from a fresh metadata request, or None when the cluster does not answer."""
        producer = self._producer
        if producer is None:
            return None
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
        except (KafkaError, OSError, TimeoutError):
            return None
        return Cluster(brokers=len(metadata.brokers()), topics=frozenset(metadata.topics()))


async def _first_partition(producer: AIOKafkaProducer, batcher: Batcher, topic: str, key: bytes) -> int:
    """The record's partition once the topic's metadata is fetched (its first record, or after a refresh)."""
    await producer.partitions_for(topic)
    partition = batcher.partition(topic, key)
    if partition is None:
        raise UnknownTopicOrPartitionError(topic)
    return partition


async def _flush_and_stop(producer: AIOKafkaProducer, batcher: Batcher) -> None:
    await batcher.flush()
    batcher.close()
    await producer.stop()


def _unsent(exc: KafkaError) -> Unavailable:
    """A send refused before the record reached a batch: nothing was written."""
    if isinstance(exc, ProducerClosed):
        return Unavailable("shutting_down", "the producer is closing")
    return _failed(exc)


def _failed(exc: KafkaError) -> Unavailable:
    """A Kafka error as the relay answers it: refused for good, or worth a retry (`kafka_error`)."""
    if isinstance(exc, RecordTooLargeError) or getattr(exc, "errno", None) in _REFUSED_FOR_GOOD:
        return KafkaRefused(type(exc).__name__)
    if isinstance(exc, TopicAuthorizationFailedError):
        return KafkaDenied(type(exc).__name__)
    return Unavailable("kafka_error", type(exc).__name__)


def _nothing() -> None:
    return None


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except (KafkaError, OSError, TimeoutError):
        logger.debug("producer stop after failed start raised", exc_info=True)


async def probe(settings: Settings, *, metadata_timeout: float) -> Cluster:
    """Connect within the startup bound and describe the cluster, then disconnect.

    Used by `serve` before it binds its port and by `check`. Raises StartupError with the reason.
    """
    publisher = KafkaPublisher.from_settings(settings)
    await publisher.start(timeout=settings.startup_timeout_seconds)
    topics = settings.router().topics()
    try:
        cluster = await publisher.describe(timeout=metadata_timeout)
        states = await publisher.topic_states(topics, timeout=metadata_timeout)
    finally:
        await publisher.stop()
    servers = ",".join(settings.kafka_bootstrap_servers)
    if cluster is None or states is None:
        raise StartupError(f"Kafka at {servers} does not answer metadata requests")
    denied = [topic for topic in topics if states[topic].problem is TopicAuthorizationFailedError]
    if denied:
        reason = refused(f"Describe refused on {', '.join(denied)}", settings.kafka_security)
        raise StartupError(f"Kafka at {servers}: {reason}")
    return cluster
