"""The publisher's producer: built, started (or retried in the background), replaced when broken, stopped;
and the cluster's metadata read through it (readiness, `check`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

from relay.errors import StartupError
from relay.kafka.abandon import quiet_stop
from relay.kafka.batching import BATCH_BYTES, Batcher
from relay.kafka.security import PRODUCER_REFUSED, client_options, diagnose, fingerprint, refused
from relay.kafka.topics import TopicState, describe
from relay.settings import ConfigError, KafkaSecurity, Settings

# The producer's lifecycle lines keep the logger name they had before the split (log queries filter on it).
logger = logging.getLogger("relay.kafka.publisher")


@dataclass(frozen=True, slots=True)
class Cluster:
    brokers: int
    topics: frozenset[str]


UNMADE_PAUSE = 1.0
"""Seconds between attempts to make a replacement producer while its credential files cannot be used."""


class KafkaUnreachable(StartupError):
    """Kafka did not answer (as opposed to refusing): a relay with a spool can start without it."""


class Connection:
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
        lane_records: int | None = None,
    ) -> None:
        self._batching = partial(Batcher, bound=publish_timeout, lane_records=lane_records)  # each producer's
        self._bootstrap = list(bootstrap_servers)
        self._security = security or KafkaSecurity()
        self._topics = list(topics)  # those readiness checks for an authorization refusal
        self._timeout = publish_timeout
        self._start_timeout = publish_timeout  # `start`'s bound, a replacement's too: a publish bound is too short
        self._delivery_timeout = max(delivery_timeout, publish_timeout)
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._batcher: Batcher | None = None  # the producer's, swapped with it
        self._replacing: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._material = b""  # fingerprint of the credential files the current producer was built with
        self._unmade = ""  # why the last replacement could not be made (said once)
        self.replacements = 0
        self.on_replaced: Callable[[], None] = _nothing

    @classmethod
    def from_settings(cls, settings: Settings, *, publish_timeout: float | None = None) -> Self:
        """`publish_timeout`: a spool's shorter bound. No spool: a stalled partition holds max_in_flight / 8 at most."""
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            publish_timeout=publish_timeout or settings.publish_timeout_seconds,
            delivery_timeout=settings.kafka_delivery_timeout_seconds,
            security=settings.kafka_security,
            topics=settings.router().topics(),
            lane_records=None if settings.spool_dir is not None else max(1, settings.max_in_flight // 8),
        )

    def credentials_changed(self) -> bool:
        """True when the credential files on disk differ from those the running producer was built with: a
        renewed password or certificate is used after a restart (docs/operations.md)."""
        return bool(self._material) and self._fingerprint() != self._material

    def _fingerprint(self) -> bytes:
        return fingerprint(self._security) if self._security.files() else b""

    def _new_producer(self) -> AIOKafkaProducer:
        return new_producer(self._bootstrap, self._client_id, self._security, self._delivery_timeout)

    async def start(self, *, timeout: float, background: bool = False) -> None:
        """Connect and fetch metadata within `timeout` seconds. Raises StartupError.

        `background` (a relay with a spool): an unreachable Kafka is not fatal; the producer keeps
        trying in the background, publishes fail meanwhile (and are spooled). A refusal still raises.
        """
        self._start_timeout = max(timeout, self._timeout)
        try:
            await self._start_once(timeout)
        except KafkaUnreachable as exc:
            if not background:
                raise
            logger.warning("%s; starting without Kafka (the spool takes the records), retrying", exc)
            self._starting = asyncio.create_task(self._start_later(timeout, str(exc)), context=contextvars.Context())

    async def _start_once(self, timeout: float) -> None:
        material = self._fingerprint()  # read before the files are, so a change in between shows as changed
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except ClusterAuthorizationFailedError as exc:
            await quiet_stop(producer)
            raise StartupError(
                f"Kafka at {','.join(self._bootstrap)}: {refused(PRODUCER_REFUSED, self._security)}"
            ) from exc
        except (KafkaError, OSError, TimeoutError) as exc:
            await quiet_stop(producer)
            raise await self._why_not(timeout) from exc
        self._producer, self._batcher = producer, self._batching(producer)
        self._material = material
        logger.info("kafka producer started (bootstrap %s)", ",".join(self._bootstrap))

    async def _start_later(self, timeout: float, said: str = "") -> None:
        """Every 2 s until a producer starts. Why not (still unreachable; a rotated password, an expired certificate, a
        credential file mid-rotation) is said once per reason (`said`: the one `start` said already)."""
        while self._producer is None:
            await asyncio.sleep(2.0)
            try:
                await self._start_once(timeout)
            except (StartupError, ConfigError, OSError) as exc:
                if str(exc) != said:
                    said = str(exc)
                    logger.warning("kafka producer not started (%s); retrying", exc)

    async def _why_not(self, timeout: float) -> StartupError:
        """The startup failure in one line: what the broker refused, or that it did not answer in time."""
        servers = ",".join(self._bootstrap)
        cause = await diagnose(self._bootstrap, self._security)
        if cause is None or cause.startswith(("connection refused", "no answer", "no route")):
            detail = f": {cause}" if cause else ""
            return KafkaUnreachable(f"Kafka at {servers} not reachable within {timeout:g}s{detail}")
        return StartupError(f"Kafka at {servers}: {cause}")

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Flush what is pending and close, within `timeout`. Idempotent. Past it, the batcher is closed (its
        records fail: none was answered 2xx) and the producer is left to the process's exit, not stopped."""
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        producer, batcher = self._producer, self._batcher  # cleared first: a batch failing on the broken producer
        self._producer = self._batcher = None  # meanwhile starts no replacement (`_replace` wants it current)
        if (replacing := self._replacing) is not None:  # and the cancelled one installs nothing
            replacing.cancel()
            await asyncio.gather(replacing, return_exceptions=True)
        if producer is None or batcher is None:
            return
        try:
            await asyncio.wait_for(_flush_and_stop(producer, batcher), timeout)
        except TimeoutError:
            logger.warning("kafka producer did not flush within %.1fs", timeout)
            batcher.close()
        logger.info("kafka producer stopped")

    def _replace(self, broken: AIOKafkaProducer, cause: Exception) -> None:
        """Swap in a new producer (new producer id), once per broken producer.

        aiokafka cannot resynchronise an idempotent producer's sequence numbers after records were lost in an
        outage (aio-libs/aiokafka#1017): every later send fails. The Java client bumps the epoch; we start a fresh
        producer instead. The broken one's unsent records fail, which releases their claims for the retries.
        """
        if self._producer is not broken or self._replacing is not None:
            return
        logger.warning("kafka producer broken (%s); replacing it", type(cause).__name__)
        self._replacing = asyncio.create_task(self._swap(broken), context=contextvars.Context())

    async def _swap(self, broken: AIOKafkaProducer) -> None:
        try:  # a credential file unreadable at this moment (mid-rotation): a failure after the pause tries again
            material = self._fingerprint()
            fresh = self._new_producer()
        except (ConfigError, OSError) as exc:
            if str(exc) != self._unmade:  # said once per reason, not once per failed batch
                self._unmade = str(exc)
                logger.warning("replacement producer could not be made (%s); a later failure retries", exc)
            try:
                await asyncio.sleep(UNMADE_PAUSE)  # at most one attempt per pause while the file stays bad
            finally:
                self._replacing = None
            return
        self._unmade = ""
        installed = False
        try:
            await asyncio.wait_for(fresh.start(), self._start_timeout)
            retired = self._batcher
            self._producer, self._batcher = fresh, self._batching(fresh)
            self._material = material
            installed = True
            if retired is not None:  # its unsent batches fail, which releases their claims for the retries
                retired.close(KafkaError("producer replaced before this batch was sent"))
            self.replacements += 1
            self.on_replaced()
            logger.warning("kafka producer replaced (%d so far)", self.replacements)
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("replacement producer could not start (%r); the next failure retries", exc)
        finally:
            if not installed:  # also when cancelled by stop(): never leave a half-started producer
                await quiet_stop(fresh)
            self._replacing = None
        if installed:  # after: the fresh producer, should it break while this one stops, is replaced at once
            await quiet_stop(broken)

    async def ping(self, *, timeout: float = 2.0) -> bool:
        """True when a metadata request for the relay's topics succeeds within `timeout` and refuses none of
        them: a Describe ACL removed at runtime makes the relay not ready. Write removed alone (Read or Describe
        kept) is not seen by metadata: every record is then 503 `kafka_denied` while it stays ready."""
        states = await self.topic_states(self._topics, timeout=timeout)
        return states is not None and not any(s.problem is TopicAuthorizationFailedError for s in states.values())

    async def topic_states(self, topics: Sequence[str], *, timeout: float = 2.0) -> dict[str, TopicState] | None:
        """Each topic's metadata (creating none), or None when the cluster does not answer within `timeout`."""
        if (producer := self._producer) is None:
            return None
        try:
            return await asyncio.wait_for(describe(producer.client, topics), timeout)
        except (KafkaError, OSError, TimeoutError):
            return None

    async def describe(self, *, timeout: float = 2.0) -> Cluster | None:
        """Brokers and topics from a fresh metadata request, or None when the cluster does not answer."""
        if (producer := self._producer) is None:
            return None
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
        except (KafkaError, OSError, TimeoutError):
            return None
        return Cluster(brokers=len(metadata.brokers()), topics=frozenset(metadata.topics()))


async def _flush_and_stop(producer: AIOKafkaProducer, batcher: Batcher) -> None:
    await batcher.flush()
    batcher.close()
    await producer.stop()


def new_producer(
    bootstrap: list[str], client_id: str, security: KafkaSecurity, delivery_timeout: float
) -> AIOKafkaProducer:
    """The relay's producer: idempotent, acks=all. Raises ConfigError for a credential file it cannot use.

    request_timeout_ms is also aiokafka's expiry of a batch not yet sent (with idempotence, one sent is not
    expired while its partition has a leader; leaderless past it, even a sent one is failed, and
    docs/guarantees.md §3 says the duplicate that can follow), and how long it waits for one produce answer
    (one request in flight per broker: a frozen leader holds its partitions' batches that long). A batch
    expired after it was sent might still have been written, and its expiry would leave a sequence gap that
    breaks the idempotent producer. So it is long (like Java's delivery.timeout.ms): across an outage the
    producer keeps retrying, the broker dedupes the resends, and the relay answers within its own shorter
    bound. Records reach it in batches (relay.batching) that are closed when submitted: no linger applies.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        max_batch_size=BATCH_BYTES,
        request_timeout_ms=int(delivery_timeout * 1000),
        retry_backoff_ms=100,
        **client_options(security),
    )


def _nothing() -> None:
    return None
