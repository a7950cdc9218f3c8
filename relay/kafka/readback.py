"""Reads back what a topic holds, for the spool's recovery check (`RELAY_SPOOL_RECOVERY_CHECK`).

`present()` answers which (key, value) records a topic holds among those written from a time on: it
reads only the partitions the keys map to (Kafka's partitioner, `partitioning.partition_for`), from the
first offset at that time less `SKEW` (ListOffsets by timestamp) to the end offset read when it starts.
It reads with a consumer that has no group (`assign()`, nothing committed): it needs Describe and Read
on the topic, and no group ACL. Bounded: at most `limit` records read and `bound` seconds, else it is
given up (KafkaRefused) and the records are published again, at-least-once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from relay.errors import KafkaRefused, Unavailable
from relay.kafka import topics
from relay.kafka.partitioning import partition_for
from relay.kafka.security import client_options
from relay.settings import KafkaSecurity, Settings

SKEW = 300.0
"""Seconds read before a record's send time: a clock stepped back, a topic stamped by the broker's clock."""
LIMIT = 1_000_000
BOUND = 60.0
Pair = tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]
"""A record as the check compares it: key, value and headers, all exact (a DLQ record's value is the raw
body, the same for two records of one delivery that differ only in their headers)."""


class KafkaFinder:
    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        security: KafkaSecurity | None = None,
        *,
        limit: int = LIMIT,
        bound: float = BOUND,
    ) -> None:
        self._servers = list(bootstrap_servers)
        self._security = security or KafkaSecurity()
        self._limit = limit
        self._bound = bound

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaFinder:
        return cls(settings.kafka_bootstrap_servers, settings.kafka_security)

    async def present(
        self, topic: str, records: Sequence[Pair], since: float, *, ignored: Collection[str] = ()
    ) -> set[Pair]:
        """Which of `records` `topic` holds, written from `since` (epoch seconds) on; a record in Kafka is compared
        without its headers named in `ignored` (`records` come without them). Raises KafkaRefused (for good:
        refused, absent, past the bounds) or Unavailable (Kafka cannot be reached now)."""
        try:
            async with asyncio.timeout(self._bound):
                partitions = await self._partitions(topic)
                return await self._read(topic, partitions, records, since, frozenset(ignored)) if partitions else set()
        except TimeoutError:
            raise KafkaRefused(f"reading {topic} back took more than {self._bound:g}s") from None
        except topics.TopicUnreadable as exc:
            if exc.retriable:  # a partition with no leader yet (a broker restarting): ask again later
                raise Unavailable("kafka_error", f"reading {topic} back: {exc}") from None
            raise KafkaRefused(f"{topic}: {exc}") from None
        except KafkaError as exc:
            if not exc.retriable and not isinstance(exc, OSError):
                raise KafkaRefused(f"{topic}: {type(exc).__name__}") from None
            raise Unavailable("kafka_error", f"reading {topic} back: {type(exc).__name__}") from None
        except OSError as exc:
            raise Unavailable("kafka_error", f"reading {topic} back: {exc}") from None

    async def _partitions(self, topic: str) -> int:
        """How many partitions `topic` has; 0 when it does not exist (then it holds none of the records)."""
        async with topics.metadata_client(self._servers, self._security) as client:
            state = await topics.state_of(client, topic, bound=min(10.0, self._bound))
        return len(state.partitions or ())

    async def _read(
        self, topic: str, partitions: int, records: Sequence[Pair], since: float, ignored: frozenset[str]
    ) -> set[Pair]:
        wanted: dict[TopicPartition, set[Pair]] = {}
        for record in records:
            wanted.setdefault(TopicPartition(topic, partition_for(record[0], partitions)), set()).add(record)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=None,
            enable_auto_commit=False,
            **client_options(self._security),
        )
        try:  # started inside: a check cut while it starts still closes its connection
            await consumer.start()
            consumer.assign(list(wanted))
            return await _scan(consumer, wanted, since, self._limit, ignored)
        finally:
            await consumer.stop()


async def _scan(
    consumer: AIOKafkaConsumer,
    wanted: dict[TopicPartition, set[Pair]],
    since: float,
    limit: int,
    ignored: frozenset[str],
) -> set[Pair]:
    """From the offsets at `since - SKEW` to the end offsets read now, the wanted records found."""
    parts = list(wanted)
    starts = await consumer.offsets_for_times({tp: max(int((since - SKEW) * 1000), 0) for tp in parts})
    ends = await consumer.end_offsets(parts)
    active = set()
    for tp in parts:
        found = starts.get(tp)
        start = ends[tp] if found is None else found.offset
        if start < ends[tp]:
            consumer.seek(tp, start)
            active.add(tp)
    present: set[Pair] = set()
    read = 0
    while active:
        batches = await consumer.getmany(*active, timeout_ms=500)
        for tp, messages in batches.items():
            for message in messages:
                if message.offset >= ends[tp]:
                    break
                headers = tuple((k, bytes(v)) for k, v in message.headers if k not in ignored)
                pair = (message.key or b"", message.value or b"", headers)
                if pair in wanted[tp]:
                    present.add(pair)
            read += len(messages)
        for tp in list(active):
            if await consumer.position(tp) >= ends[tp] or wanted[tp] <= present:
                active.discard(tp)
        if read > limit:
            raise KafkaRefused(f"more than {limit} records to read back")
    return present
