"""Kafka publishing with an idempotent aiokafka producer (`acks=all`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed

from relay.errors import StartupError, Unavailable

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class PublishPending(Unavailable):
    """No acknowledgement within the bound, but the record is still in the producer and may land.

    The idempotent producer retries a sent batch until it succeeds, so the delivery is neither
    durable nor failed yet: the caller must keep its dedupe claim until `outcome` settles.
    """

    def __init__(self, outcome: Coroutine[Any, Any, Ack], timeout: float) -> None:
        super().__init__("kafka_timeout", f"no acknowledgement within {timeout:g}s")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Ack:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Cluster:
    brokers: int
    topics: frozenset[str]


class KafkaPublisher:
    """Owns one producer; created and started inside the running loop (by the app's lifespan)."""

    def __init__(
        self, *, bootstrap_servers: Sequence[str], publish_timeout: float, client_id: str = "mytpe-relay"
    ) -> None:
        self._bootstrap = list(bootstrap_servers)
        self._timeout = publish_timeout
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self, *, timeout: float) -> None:
        """Connect and fetch metadata within `timeout` seconds. Raises StartupError."""
        # aiokafka expires a batch after request_timeout_ms; keep that inside our own bound so the
        # producer gives up on a record before we answer 503 (see docs/guarantees.md).
        request_timeout_ms = max(int(self._timeout * 1000) - 500, 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=100,
        )
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await _quiet_stop(producer)
            raise StartupError(f"Kafka at {','.join(self._bootstrap)} not reachable within {timeout:g}s") from exc
        self._producer = producer
        logger.info("kafka producer started (bootstrap %s)", ",".join(self._bootstrap))

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Flush what is pending and close. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except TimeoutError:
            logger.warning("kafka producer did not flush within %.1fs", timeout)
        logger.info("kafka producer stopped")

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers) -> Ack:
        """Send one record and wait for the broker's `acks=all` acknowledgement.

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
        producer = self._producer
        if producer is None:
            raise Unavailable("shutting_down", "the producer is stopped")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            # Appends to a batch; waits only for metadata or buffer space. Nothing is sent on failure.
            delivery = await asyncio.wait_for(
                producer.send(topic, value, key=key, headers=list(headers)), self._timeout
            )
        except (TimeoutError, KafkaTimeoutError) as exc:
            raise Unavailable("kafka_timeout", "no metadata or buffer space within the bound") from exc
        except ProducerClosed as exc:
            raise Unavailable("shutting_down", "the producer is closing") from exc
        except KafkaError as exc:
            raise Unavailable("kafka_error", type(exc).__name__) from exc
        # asyncio.wait, unlike wait_for, leaves the delivery future alive when the bound passes.
        done, _ = await asyncio.wait({delivery}, timeout=max(deadline - loop.time(), 0.0))
        if not done:
            raise PublishPending(_settled(delivery), self._timeout)
        return await _settled(delivery)

    async def ping(self, *, timeout: float = 2.0) -> bool:
        """True when a metadata request to the cluster succeeds within `timeout`."""
        return await self.describe(timeout=timeout) is not None

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


async def _settled(delivery: asyncio.Future[Any]) -> Ack:
    """The acknowledgement of a sent record. Raises Unavailable if the producer gave up on it."""
    try:
        metadata = await delivery
    except ProducerClosed as exc:
        raise Unavailable("shutting_down", "the producer closed before the acknowledgement") from exc
    except KafkaError as exc:
        raise Unavailable("kafka_error", type(exc).__name__) from exc
    return Ack(metadata.topic, metadata.partition, metadata.offset)


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except (KafkaError, OSError, TimeoutError):
        logger.debug("producer stop after failed start raised", exc_info=True)
