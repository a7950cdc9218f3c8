"""Kafka stopped mid-test: 503 `unavailable`, then the same delivery retried is published exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx2 as httpx
import pytest
from localkafka import LocalKafka

from relay.settings import Settings
from tests.conftest import FIGURES
from tests.helpers import sample, signed_headers
from tests.integration.conftest import read_topic, running_relay

pytestmark = pytest.mark.integration


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own, so stopping it disturbs no other test."""
    with LocalKafka(tmp_path / "kafka") as broker:
        yield broker


def now() -> int:
    return int(datetime.now().timestamp())


async def post(client: httpx.AsyncClient, url: str, body: bytes, delivery_id: str) -> httpx.Response:
    return await client.post(url, content=body, headers=signed_headers(body, timestamp=now(), delivery_id=delivery_id))


async def test_kafka_down_then_back(own_kafka: LocalKafka, settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(
        kafka_bootstrap_servers=(own_kafka.bootstrap,), publish_timeout_seconds=3.0, inflight_wait_seconds=1.0
    )
    before, before_id = sample("transaction.pending")
    during, during_id = sample("transaction.completed")
    after, after_id = sample("transaction.failed")
    async with running_relay(settings) as relay, httpx.AsyncClient(timeout=30) as client:
        assert (await post(client, relay.webhook_url, before, before_id)).json()["status"] == "accepted"

        await asyncio.to_thread(own_kafka.stop)
        ready = await client.get(f"{relay.url}/readyz")
        assert (ready.status_code, ready.json()["kafka"]) == (503, False)
        down = await post(client, relay.webhook_url, during, during_id)
        assert down.status_code == 503
        assert down.json()["reason"] == "unavailable"
        assert int(down.headers["Retry-After"]) > 0
        retried_while_down = await post(client, relay.webhook_url, during, during_id)
        assert retried_while_down.status_code == 503

        await asyncio.to_thread(own_kafka.start)
        statuses = []
        for _ in range(40):  # bounded: MyTPE-like retries until the relay answers 2xx
            response = await post(client, relay.webhook_url, during, during_id)
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            await asyncio.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert response.json()["status"] in {"accepted", "duplicate"}
        again = await post(client, relay.webhook_url, during, during_id)
        assert again.json()["status"] == "duplicate"
        assert (await post(client, relay.webhook_url, after, after_id)).json()["status"] == "accepted"
        ready = await client.get(f"{relay.url}/readyz")
        assert ready.status_code == 200
        metrics = (await client.get(f"{relay.url}/metrics")).text
        assert 'mytpe_relay_publish_errors_total{reason="' in metrics

    records = await read_topic(own_kafka.bootstrap, f"{settings.topic_prefix}.transaction")
    ids = [json.loads(r.value)["id"] for r in records]
    assert sorted(ids) == sorted([before_id, during_id, after_id]), ids


async def test_kafka_frozen_past_the_publish_timeout_then_a_late_ack_answers_duplicate(
    own_kafka: LocalKafka, settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """guarantees.md §3 on the real broker: the broker frozen (SIGSTOP) with the record sent gives 503
    `kafka_timeout`; a retry meanwhile waits, then 503 `in_flight`; the broker resumed, Kafka's late ack
    commits the claim and the retry is answered `duplicate`. Exactly one record."""
    settings = settings_factory(
        kafka_bootstrap_servers=(own_kafka.bootstrap,), publish_timeout_seconds=3.0, inflight_wait_seconds=1.0
    )
    caplog.set_level(logging.INFO, logger="relay.pipeline")
    warm, warm_id = sample("transaction.pending")
    body, delivery_id = sample("transaction.completed")
    causes: list[str] = []
    async with running_relay(settings) as relay, httpx.AsyncClient(timeout=30) as client:
        assert (await post(client, relay.webhook_url, warm, warm_id)).json()["status"] == "accepted"
        own_kafka.pause()
        try:
            first = await post(client, relay.webhook_url, body, delivery_id)
            assert (first.status_code, first.json()["cause"]) == (503, "kafka_timeout"), first.text
            retry = await post(client, relay.webhook_url, body, delivery_id)
            assert (retry.status_code, retry.json()["cause"]) == (503, "in_flight"), retry.text
        finally:
            own_kafka.resume()
        for _ in range(120):  # bounded: MyTPE-like retries until the late ack is in (each waits up to 1 s)
            response = await post(client, relay.webhook_url, body, delivery_id)
            if response.status_code == 200:
                break
            causes.append(response.json()["cause"])
            await asyncio.sleep(0.2)
        assert response.status_code == 200, causes
        assert response.json()["status"] == "duplicate"
        assert set(causes) <= {"in_flight"}, causes  # never published a second time meanwhile
    late = [r for r in caplog.records if "acknowledged late by Kafka" in r.getMessage()]
    assert len(late) == 1 and delivery_id in late[0].getMessage()
    records = await read_topic(own_kafka.bootstrap, f"{settings.topic_prefix}.transaction")
    ids = [json.loads(r.value)["id"] for r in records]
    assert sorted(ids) == sorted([warm_id, delivery_id]), ids
    more = len(causes)
    FIGURES.append(f"broker frozen: 503 kafka_timeout, 503 in_flight, {more} more in_flight, then duplicate; 1 record")
