"""Kafka publishing with an idempotent aiokafka producer (`acks=all`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownTopicOrPartitionError,
)

from relay.errors import KafkaRefused, PublishPending, StartupError, Unavailable
from relay.kafka.batching import Batch, Batcher, Stalled
from relay.kafka.connection import Cluster, Connection
from relay.kafka.failures import BROKEN_PRODUCER, failed, refused_with_others
from relay.kafka.security import refused
from relay.settings import Settings
from relay.types import Ack

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Resend:
    """One record of a refused batch, to be published again in a batch of its own, within what is left of the
    first send's bound (`deadline`, loop time): a request never waits on Kafka past RELAY_PUBLISH_TIMEOUT_SECONDS,
    so its dedupe claim, whose lease must exceed that, is not left to run out while it waits."""

    publisher: KafkaPublisher
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    deadline: float

    async def __call__(self) -> Ack:
        return await self.publisher._publish(self.topic, self.key, self.value, self.headers, until=self.deadline)


class KafkaPublisher(Connection):
    """Publishes through the producer its Connection owns: one record, its batch, its acknowledgement."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers) -> Ack:
        """Send one record and wait for the broker's `acks=all` acknowledgement. A record whose batch of
        several was refused for its size (or an UnknownError) is sent again alone, within what is left of its
        bound (RELAY_PUBLISH_TIMEOUT_SECONDS from its cohort's opening, `Batch`, or from this call for a
        topic's first record): past it, PublishPending as for any record.

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
                `shutting_down`, `partition_stalled`: at once, while the record's partition holds too many
                records past their bound, `Batcher.append`); the caller releases its dedupe claim.
        """
        return await self._publish(topic, key, value, list(headers))

    async def _publish(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, until: float | None = None
    ) -> Ack:
        """`publish()`; `until`: the resend, in a batch of its own, of a record whose batch was refused, waited
        for until the first send's deadline (loop time) only."""
        producer, batcher = self._producer, self._batcher
        if producer is None or batcher is None:
            raise Unavailable("shutting_down", "the producer is stopped")
        alone = until is not None
        partition = batcher.partition(topic, key)
        deadline = until
        try:
            if partition is None:  # the topic's first record: its metadata and its ack share one bound
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self._timeout
                async with asyncio.timeout_at(deadline):
                    partition = await _first_partition(producer, batcher, topic, key)
            # An append to the partition's open batch; nothing is sent if this raises.
            batch, index = batcher.append(topic, partition, key, value, headers, alone=alone)
        except (TimeoutError, KafkaTimeoutError) as exc:
            raise Unavailable("kafka_timeout", "no metadata within the bound") from exc
        except Stalled as exc:  # its partition holds too many records past their bound: not taken, not pending
            raise Unavailable("partition_stalled", str(exc)) from exc
        except ProducerClosed as exc:
            raise self._closed(producer, "before the record was sent") from exc
        except KafkaError as exc:
            raise failed(exc) from exc
        # Woken when the batch settles or its bound passes: one timer per cohort of the batch, none per request.
        if deadline is None:
            await batch.waiter(index)
        else:
            with contextlib.suppress(TimeoutError):  # what the record became is read from the batch below
                async with asyncio.timeout_at(deadline):
                    await batch.waiter(index)
        done = batch.future
        if done.done() and done.exception() is None:
            return Ack(topic, partition, done.result() + index)
        where = Ack(topic, partition, index)
        bound = batch.opened_at(index) + self._timeout if deadline is None else deadline  # its wait's end
        again = None if alone else Resend(self, topic, key, value, headers, bound)
        if not done.done():  # the record stays in the producer, which may still write it
            raise PublishPending(self._settled(producer, batch, where, again), self._timeout)
        if again is not None and refused_with_others(done.exception(), batch):
            return await again()  # within what is left of this bound; PublishPending reaches the caller as usual
        return await self._settled(producer, batch, where, None)

    async def _settled(self, producer: AIOKafkaProducer, batch: Batch, where: Ack, again: Resend | None) -> Ack:
        """The acknowledgement of an appended record (`where.offset` is its index in the batch).

        A batch of several records refused for its size or an invalid record is no verdict on this
        record: it is sent again alone (`again`), and only a refusal of it alone is for good. Called once the
        record was answered pending, so the resend gets a bound of its own: nobody waits on the first one.
        Raises Unavailable if the producer gave up on it, or never took it (send_batch raised).
        """
        try:
            base_offset = await asyncio.shield(batch.future)
        except KafkaError as exc:
            if again is None or not refused_with_others(exc, batch):
                raise self._why(producer, exc) from exc
            try:
                return await replace(again, deadline=asyncio.get_running_loop().time() + self._timeout)()
            except PublishPending as pending:
                return await pending.outcome
        except Exception as exc:  # send_batch's own refusal (a partition the topic no longer has): nothing was sent
            raise Unavailable("kafka_error", f"{type(exc).__name__}: {exc}") from exc
        return Ack(where.topic, where.partition, base_offset + where.offset)

    def _why(self, producer: AIOKafkaProducer, exc: KafkaError) -> Unavailable:
        """What a failed batch means for its records (and a broken producer is replaced)."""
        if isinstance(exc, ProducerClosed):
            return self._closed(producer, "before the acknowledgement")
        if isinstance(exc, BROKEN_PRODUCER):
            self._replace(producer, exc)
            return Unavailable("kafka_error", type(exc).__name__)
        if isinstance(exc, UnknownError):  # a record alone: possibly INVALID_RECORD; Java does not retry it either
            return KafkaRefused(type(exc).__name__)
        return failed(exc)

    def _closed(self, producer: AIOKafkaProducer, when: str) -> Unavailable:
        """ProducerClosed: `shutting_down` when the relay stopped its producer (`stop` clears it first), and
        `kafka_error` when the producer was replaced as broken while the record waited on it."""
        if self._producer is not None and self._producer is not producer:
            return Unavailable("kafka_error", f"the producer was replaced {when}")
        return Unavailable("shutting_down", f"the producer closed {when}")


async def _first_partition(producer: AIOKafkaProducer, batcher: Batcher, topic: str, key: bytes) -> int:
    """The record's partition once the topic's metadata is fetched (its first record, or after a refresh)."""
    await producer.partitions_for(topic)
    partition = batcher.partition(topic, key)
    if partition is None:
        raise UnknownTopicOrPartitionError(topic)
    return partition


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
