"""A record Kafka refuses for good (a topic whose `max.message.bytes` is 300, a webhook of about 600
bytes), on the real broker: kept in the DLQ and answered `quarantined`, with and without the spool;
a 503 when the DLQ refuses it too; and a spooled record refused later is moved to the DLQ by the drainer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay.kafka.publisher import KafkaPublisher
from relay.metrics import Metrics
from relay.ops.spool import drain
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import Pending
from tests.helpers import sample, signed_headers
from tests.integration.conftest import read_topic, running_relay

pytestmark = pytest.mark.integration
SMALL = {"max.message.bytes": "300"}


async def make_topics(bootstrap: str, prefix: str, *, small_dlq: bool = False) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"{prefix}.transaction", num_partitions=1, replication_factor=1, topic_configs=SMALL),
                NewTopic(f"{prefix}.pay_link", num_partitions=1, replication_factor=1),
                NewTopic(
                    f"{prefix}.dlq", num_partitions=1, replication_factor=1, topic_configs=SMALL if small_dlq else {}
                ),
            ]
        )
    finally:
        await admin.close()


async def post(url: str) -> tuple[httpx.Response, bytes, str]:
    body, delivery_id = sample("transaction.completed")
    assert len(body) > 300, "the webhook must be larger than the topic allows"
    headers = signed_headers(body, timestamp=int(datetime.now().timestamp()), delivery_id=delivery_id)
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers, timeout=30), body, delivery_id


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])
async def test_a_record_too_large_for_its_topic_is_kept_in_the_dlq(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path, spool: bool
) -> None:
    settings = kafka_settings(**({"spool_dir": tmp_path / "spool"} if spool else {}))
    prefix = settings.topic_prefix
    await make_topics(kafka.bootstrap, prefix)
    async with running_relay(settings) as relay:
        response, body, delivery_id = await post(relay.webhook_url)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "quarantined", "delivery_id": delivery_id, "reason": "kafka_refused"}
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{relay.url}/metrics")).text
            ready = await client.get(f"{relay.url}/readyz")
        assert metric(text, 'mytpe_relay_quarantined_total{reason="kafka_refused"}') == 1
        if spool:
            assert metric(text, "mytpe_relay_spool_entries") == 0, "a permanent refusal is no reason to spool"
            assert metric(text, "mytpe_relay_spooled_total") == 0
        assert ready.status_code == 200
    (kept,) = await read_topic(kafka.bootstrap, f"{prefix}.dlq")
    assert kept.value == body and kept.key == delivery_id.encode()
    assert kept.headers["reason"] == b"kafka_refused"
    assert kept.headers["kafka-error"] == b"MessageSizeTooLargeError"
    assert await read_topic(kafka.bootstrap, f"{prefix}.transaction") == []


async def test_when_the_dlq_refuses_too_the_answer_is_a_503(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = kafka_settings(spool_dir=tmp_path / "spool")
    prefix = settings.topic_prefix
    await make_topics(kafka.bootstrap, prefix, small_dlq=True)
    async with running_relay(settings) as relay:
        response, _, _ = await post(relay.webhook_url)
        assert response.status_code == 503, response.text
        assert response.json()["cause"] == "kafka_refused"
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{relay.url}/metrics")).text
        assert metric(text, "mytpe_relay_spool_entries") == 0
    assert await read_topic(kafka.bootstrap, f"{prefix}.dlq") == []
    assert await read_topic(kafka.bootstrap, f"{prefix}.transaction") == []


async def test_a_spooled_record_kafka_refuses_for_good_is_moved_to_the_dlq(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = kafka_settings()
    prefix = settings.topic_prefix
    await make_topics(kafka.bootstrap, prefix)
    metrics = Metrics()
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000, metrics=metrics)
    await spool.open()
    large = json.dumps({"id": "too-large", "pad": "x" * 600}).encode()
    small = json.dumps({"id": "ok"}).encode()
    await spool.put(Pending(f"{prefix}.transaction", b"k", large, [("content-type", b"json")]))
    await spool.put(Pending(f"{prefix}.transaction", b"k", small, [("content-type", b"json")]))
    publisher = KafkaPublisher.from_settings(settings)
    await publisher.start(timeout=settings.startup_timeout_seconds)
    try:
        left = await Drainer(spool, publisher, metrics, dlq=f"{prefix}.dlq").drain(timeout=30)
    finally:
        await publisher.stop()
        await spool.close()
    assert left == 0
    (moved,) = await read_topic(kafka.bootstrap, f"{prefix}.dlq")
    assert moved.value == large and moved.headers["reason"] == b"kafka_refused"
    assert moved.headers["mytpe-relay-topic"] == f"{prefix}.transaction".encode()
    assert [r.value for r in await read_topic(kafka.bootstrap, f"{prefix}.transaction")] == [small]
    assert metrics.quarantined.labels("kafka_refused")._value.get() == 1


async def test_spool_drain_says_how_many_of_what_it_published_went_to_the_dlq(
    kafka: Any, kafka_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding: `spool drain` counted a record it moved to the DLQ as published, so an operator read
    '2 published' for one record that never reached its topic."""
    directory = tmp_path / "spool"
    settings = kafka_settings(spool_dir=directory)
    prefix = settings.topic_prefix
    await make_topics(kafka.bootstrap, prefix)
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    large = json.dumps({"id": "too-large", "pad": "x" * 600}).encode()
    await spool.put(Pending(f"{prefix}.transaction", b"k", large, [("content-type", b"json")]))
    await spool.put(Pending(f"{prefix}.transaction", b"k", b'{"id":"ok"}', [("content-type", b"json")]))
    await spool.close()
    assert await drain(settings, directory, 30.0) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"spool {directory}: 2 record(s) published, 1 of them to the DLQ (Kafka refused them for good, or they were"
        " damaged), 0 left"
    ]
    assert err == ""
    assert [r.value for r in await read_topic(kafka.bootstrap, f"{prefix}.dlq")] == [large]
