"""The spool's flow at its bounds (the review of issue 23's spool-flow change): a denied topic, a drain
at shutdown while Kafka is down, a held row at the final flush or whose publish fails oddly, an error
during the shutdown drain. Real SQLite files; publishers are fakes (pure flow logic)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from relay.errors import KafkaDenied, Unavailable
from relay.metrics import Metrics
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.spooler import Spooled, Spooler
from relay.spool.store import Pending
from relay.types import Ack
from tests.fakes import FakePublisher

DENIED = "mytpe.pay_link"


async def opened(path: Path) -> Spool:
    spool = Spool(path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    return spool


class DenyTopic(FakePublisher):
    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == DENIED:
            raise KafkaDenied("TopicAuthorizationFailedError")
        return await super().publish(topic, key, value, headers)


async def test_a_denied_topic_neither_poisons_kafka_ok_nor_is_spooled_once_known(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    publisher = DenyTopic()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    spooler = Spooler(spool, drainer, publisher, after=1.0)
    spool.kafka_ok = False  # another key's publish just timed out: nothing tells the ACL yet
    assert isinstance(await spooler.publish(DENIED, b"p", b"v", []), Spooled)
    assert isinstance(await spooler.publish("mytpe.transaction", b"t", b"v1", []), Spooled)
    for _ in range(3):
        await drainer.pass_once()
    try:
        assert spool.kafka_ok, "a denied topic's row keeps every delivery in the spool while Kafka answers"
        assert isinstance(await spooler.publish("mytpe.transaction", b"t2", b"v2", []), Ack)
        spool.kafka_ok = False  # even during an outage, a topic known as denied is never 2xx'd
        with pytest.raises(KafkaDenied):
            await spooler.publish(DENIED, b"p2", b"v", [])
        with pytest.raises(KafkaDenied):  # nor a record of the key whose denied row waits in the spool
            await spooler.publish(DENIED, b"p", b"v2", [])
        assert spool.entries == 1  # the denied row waits for the ACL (the operator's to fix)
    finally:
        await spool.close()


async def test_drain_is_bounded_when_a_pass_publish_stays_pending(tmp_path: Path) -> None:
    """SIGTERM (or `spool drain`) while Kafka is down: drain(timeout) returns near its timeout."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", []))
    publisher = FakePublisher(leave_pending=True)  # the drain publish stays in the producer
    drainer = Drainer(spool, publisher, Metrics())
    try:
        left = await asyncio.wait_for(drainer.drain(timeout=0.5), 10)
        assert left == 1 and spool.taken, "the publish in flight keeps its row taken, never sent twice"
        assert len(publisher.pending) == 1
    finally:
        publisher.pending[0].set_exception(Unavailable("kafka_timeout"))
        await drainer.settle(timeout=5)
        await spool.close()
