"""The batched publisher on the real broker: every ack names the record's real place, in order per key."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from relay.kafka.publisher import KafkaPublisher
from relay.types import Ack
from tests.integration.conftest import read_topic

pytestmark = pytest.mark.integration

HEADERS = [("content-type", b"application/cloudevents+json; charset=utf-8")]


async def test_concurrent_publishes_land_where_their_acks_say_in_order_per_key(kafka) -> None:
    run = uuid.uuid4().hex[:8]
    topics = [f"batching-{run}.a", f"batching-{run}.b"]  # auto-created with 3 partitions each
    sent = [(topics[n % 2], f"entity-{n % 40}".encode(), f"record-{n}".encode()) for n in range(400)]
    publisher = KafkaPublisher(bootstrap_servers=[kafka.bootstrap], publish_timeout=30.0)
    await publisher.start(timeout=30)
    try:
        await publisher.publish(topics[0], b"warm", b"metadata", HEADERS)
        await publisher.publish(topics[1], b"warm", b"metadata", HEADERS)
        acks: list[Ack] = await asyncio.gather(*(publisher.publish(t, k, v, HEADERS) for t, k, v in sent))
        # A second wave while nothing is in flight: its batches follow the first wave's on each partition.
        more = await asyncio.gather(*(publisher.publish(t, k, v + b"-again", HEADERS) for t, k, v in sent[:50]))
    finally:
        await publisher.stop()

    records = [record for topic in topics for record in await read_topic(kafka.bootstrap, topic)]
    at = {(r.topic, r.partition, r.offset): r for r in records}
    assert len(records) == 2 + len(sent) + 50
    assert len(at) == len(records)
    for (topic, key, value), ack in zip(
        [*sent, *((t, k, v + b"-again") for t, k, v in sent[:50])], [*acks, *more], strict=True
    ):
        record = at[(ack.topic, ack.partition, ack.offset)]
        assert (record.topic, record.key, record.value) == (topic, key, value)
        assert record.headers == dict(HEADERS)
        assert ack.partition == DefaultPartitioner()(key, [0, 1, 2], [0, 1, 2])
    for key in {k for _, k, _ in sent}:
        offsets = [ack.offset for (_, k, _), ack in zip(sent, acks, strict=True) if k == key]
        assert offsets == sorted(offsets), f"records of {key!r} were written out of publishing order"
