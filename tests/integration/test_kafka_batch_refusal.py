"""A size refusal is about a whole batch (Kafka checks `max.message.bytes` per batch, errno 18 is the
batch's list): one oversized record must not take the other records of its batch with it. On the real
broker, with a topic whose `max.message.bytes` is 300 (1 partition, so every record shares the batch)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.errors import KafkaRefused
from relay.kafka.publisher import KafkaPublisher
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.types import Ack
from tests.integration.conftest import read_topic
from tests.integration.test_kafka_refused import make_topics

pytestmark = pytest.mark.integration


async def test_one_oversized_row_does_not_take_unrelated_rows_to_the_dlq(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = kafka_settings()
    prefix = settings.topic_prefix
    await make_topics(kafka.bootstrap, prefix)  # transaction: 1 partition, max.message.bytes 300
    metrics = Metrics()
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000, metrics=metrics)
    await spool.open()
    await spool.put(Pending(f"{prefix}.transaction", b"big", json.dumps({"pad": "x" * 600}).encode(), []))
    for n in range(3):
        await spool.put(Pending(f"{prefix}.transaction", b"k%d" % n, json.dumps({"id": n}).encode(), []))
    publisher = KafkaPublisher.from_settings(settings)
    await publisher.start(timeout=settings.startup_timeout_seconds)
    try:
        left = await Drainer(spool, publisher, metrics, dlq=f"{prefix}.dlq").drain(timeout=30)
    finally:
        await publisher.stop()
        await spool.close()
    dlq = await read_topic(kafka.bootstrap, f"{prefix}.dlq")
    family = await read_topic(kafka.bootstrap, f"{prefix}.transaction")
    assert left == 0
    assert publisher.replacements == 0, "a refused batch broke the idempotent producer's sequence"
    assert sorted(r.key or b"" for r in family) == [b"k0", b"k1", b"k2"], "small rows quarantined with the big one"
    assert [r.key for r in dlq] == [b"big"]


async def test_concurrent_small_records_sharing_a_batch_with_an_oversized_one_are_acknowledged(
    kafka: Any, kafka_settings: Callable[..., Settings]
) -> None:
    settings = kafka_settings()
    prefix = settings.topic_prefix
    topic = f"{prefix}.transaction"
    await make_topics(kafka.bootstrap, prefix)
    publisher = KafkaPublisher.from_settings(settings)
    await publisher.start(timeout=settings.startup_timeout_seconds)
    try:
        await publisher.publish(topic, b"warm", b"{}", [])  # metadata known: the next appends share one batch
        big = publisher.publish(topic, b"big", json.dumps({"pad": "x" * 600}).encode(), [])
        small = [publisher.publish(topic, b"k%d" % n, json.dumps({"id": n}).encode(), []) for n in range(3)]
        outcomes = await asyncio.gather(big, *small, return_exceptions=True)
    finally:
        await publisher.stop()
    assert isinstance(outcomes[0], KafkaRefused), outcomes[0]
    assert publisher.replacements == 0, "a refused batch broke the idempotent producer's sequence"
    assert all(isinstance(outcome, Ack) for outcome in outcomes[1:]), outcomes[1:]
    family = await read_topic(kafka.bootstrap, topic)
    assert sorted(r.key or b"" for r in family) == [b"k0", b"k1", b"k2", b"warm"]
