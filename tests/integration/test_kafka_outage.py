"""Kafka stopped mid-test: 503 `unavailable`, then the same delivery retried is published exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx2 as httpx
import pytest
from localkafka import LocalKafka

from relay.settings import Settings
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
