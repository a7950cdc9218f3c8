"""Verified webhooks through real HTTP into the real broker, read back and parsed by the CloudEvents SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx2 as httpx
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured_event

from relay.mytpe import samples
from relay.routing import parse_route
from relay.settings import Secret, Settings
from tests.helpers import sample, signed_headers
from tests.integration.conftest import Record, read_topic, running_relay
from tests.schemas import record_errors
from tests.vectors import VECTORS

pytestmark = pytest.mark.integration


def parse_record(record: Record) -> BaseCloudEvent:
    message = KafkaMessage(headers=record.headers, key=record.key, value=record.value)
    return from_structured_event(message)


async def test_all_twelve_event_types_arrive_on_their_topic_with_their_key(
    kafka, kafka_settings: Callable[..., Settings]
) -> None:
    settings = kafka_settings()
    sent: dict[str, dict[str, Any]] = {}
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        for event_type in samples.EVENTS:
            body, delivery_id = sample(event_type)
            response = await client.post(
                relay.webhook_url,
                content=body,
                headers=signed_headers(
                    body, timestamp=int(datetime.now().timestamp()), delivery_id=delivery_id, event=event_type
                ),
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "accepted", "delivery_id": delivery_id}
            sent[delivery_id] = json.loads(body)
    prefix = settings.topic_prefix
    records = {
        family: await read_topic(kafka.bootstrap, f"{prefix}.{family}") for family in ("transaction", "pay_link")
    }
    assert len(records["transaction"]) == 5
    assert len(records["pay_link"]) == 7
    assert await read_topic(kafka.bootstrap, f"{prefix}.dlq") == []
    for family, family_records in records.items():
        for record in family_records:
            assert record.headers["content-type"] == b"application/cloudevents+json; charset=utf-8"
            assert record_errors(record.value) == []
            event = parse_record(record)
            original = sent[event.get_id()]
            entity = original["data"][family]["id"]
            assert original["event"].startswith(family + ".")
            assert record.key == entity.encode()
            assert event.get_type() == "app.mytpe.pay." + original["event"]
            assert event.get_source() == "mytpe-pay/abc123-def456"
            assert event.get_subject() == entity
            assert event.get_time() == datetime.fromisoformat(original["timestamp"])
            assert event.get_data() == original["data"]
    assert set(sent) == {parse_record(r).get_id() for rs in records.values() for r in rs}


async def test_spec_vectors_through_http_keep_their_data_bytes(kafka, kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings(secrets=tuple(Secret(v.secret) for v in VECTORS), replay_window_seconds=300)
    for index, vector in enumerate(VECTORS):
        clock = float(vector.timestamp)
        async with running_relay(settings, clock=lambda c=clock: c) as relay, httpx.AsyncClient() as client:
            headers = {
                "X-MytpePay-Signature": vector.signature,
                "X-MytpePay-Timestamp": vector.timestamp,
                "X-MytpePay-Delivery-Id": json.loads(vector.body)["delivery_id"],
                "X-MytpePay-Event": vector.event,
                "Content-Type": "application/json",
            }
            response = await client.post(relay.webhook_url, content=vector.body, headers=headers)
            assert response.json()["status"] == "accepted", response.text
            metrics = (await client.get(f"{relay.url}/metrics")).text
            assert f'mytpe_relay_secret_matches_total{{secret_index="{index}",source="default"}} 1.0' in metrics
    for vector in VECTORS:
        family = vector.event.split(".")[0]
        records = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.{family}")
        original = json.loads(vector.body)
        (record,) = [r for r in records if json.loads(r.value)["id"] == original["delivery_id"]]
        data_start = vector.body.index(b'"data":')
        assert record.value.endswith(vector.body[data_start:])
        assert record_errors(record.value) == []
        assert parse_record(record).get_data() == original["data"]


async def test_duplicate_delivery_is_published_once(kafka, kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings()
    body, delivery_id = sample("pay_link.closed")
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        statuses = []
        for _ in range(3):
            headers = signed_headers(body, timestamp=int(datetime.now().timestamp()), delivery_id=delivery_id)
            statuses.append((await client.post(relay.webhook_url, content=body, headers=headers)).json()["status"])
    assert statuses == ["accepted", "duplicate", "duplicate"]
    records = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.pay_link")
    assert [json.loads(r.value)["id"] for r in records] == [delivery_id]


async def test_unusable_body_lands_in_the_dlq_raw(kafka, kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings()
    body = b'{"delivery_id":"q-9","event":"refund.created","data":{"amount":10.00}}'
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        headers = signed_headers(body, timestamp=int(datetime.now().timestamp()), delivery_id="q-9")
        response = await client.post(relay.webhook_url, content=body, headers=headers)
    assert response.json() == {"status": "quarantined", "delivery_id": "q-9", "reason": "unroutable_event"}
    (record,) = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.dlq")
    assert record.value == body
    assert record.key == b"q-9"
    assert record.headers["reason"] == b"unroutable_event"
    assert record.headers["x-mytpepay-signature"] == headers["X-MytpePay-Signature"].encode()


async def test_rejected_requests_publish_nothing(kafka, kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings()
    body, delivery_id = sample()
    now = int(datetime.now().timestamp())
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        bad = signed_headers(body, timestamp=now, delivery_id=delivery_id, secret="whsec_" + "0" * 48)
        stale = signed_headers(body, timestamp=now - 301, delivery_id=delivery_id)
        assert (await client.post(relay.webhook_url, content=body, headers=bad)).status_code == 401
        assert (await client.post(relay.webhook_url, content=body, headers=stale)).status_code == 401
        # Bodies that a correct signature would send to the DLQ: forged, they must not reach it either.
        for junk in (b"not json", b'{"event":"refund.created","data":{}}', body[:-1]):
            forged = signed_headers(junk, timestamp=now, delivery_id=f"forged-{len(junk)}", secret="whsec_" + "0" * 48)
            assert (await client.post(relay.webhook_url, content=junk, headers=forged)).status_code == 401
            stale_junk = signed_headers(junk, timestamp=now - 301, delivery_id=f"stale-{len(junk)}")
            assert (await client.post(relay.webhook_url, content=junk, headers=stale_junk)).status_code == 401
        good = signed_headers(body, timestamp=now, delivery_id=delivery_id)
        assert (await client.post(relay.webhook_url, content=body, headers=good)).json()["status"] == "accepted"
        quarantined = signed_headers(b"not json", timestamp=now, delivery_id="signed-junk")
        assert (await client.post(relay.webhook_url, content=b"not json", headers=quarantined)).status_code == 200
    records = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.transaction")
    assert [json.loads(r.value)["id"] for r in records] == [delivery_id]
    dlq = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.dlq")
    assert [(r.key, r.value) for r in dlq] == [(b"signed-junk", b"not json")]  # the signed one only


NEW_GENERATION = {
    "transaction.paid": ('{"transaction":{"id":"tx-1","status":"paid","amount":"4500.00"}}', "transaction", "tx-1"),
    "payment_link.exhausted": ('{"payment_link":{"id":"pl-1","status":"exhausted"}}', "pay_link", "pl-1"),
    "trader.onboarding_changed": ('{"trader":{"id":"tr-1"},"status":"kyc_approved"}', "kyc", "tr-1"),
    "identification.approved": ('{"id":"idn-1","status":"accepted"}', "kyc", "idn-1"),
}


async def test_newer_generation_families_follow_the_configured_routes(
    kafka, kafka_settings: Callable[..., Settings]
) -> None:
    routes = tuple(map(parse_route, ["payment_link=pay_link", "trader=kyc", "identification=kyc"]))
    settings = kafka_settings(routes=routes)
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        for event, (data, _, _) in NEW_GENERATION.items():
            body = f'{{"delivery_id":"{event}","event":"{event}","data":{data}}}'.encode()
            headers = signed_headers(body, timestamp=int(datetime.now().timestamp()), delivery_id=event, event=event)
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            assert response.json() == {"status": "accepted", "delivery_id": event}
    for event, (_, topic, key) in NEW_GENERATION.items():
        records = await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.{topic}")
        (record,) = [r for r in records if json.loads(r.value)["id"] == event]
        assert record.key == key.encode()
        assert parse_record(record).get_type() == f"app.mytpe.pay.{event}"
        assert record_errors(record.value) == []
    assert await read_topic(kafka.bootstrap, f"{settings.topic_prefix}.dlq") == []
