from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured_event

from relay import envelope
from relay.mytpe.payload import parse
from relay.routing import Router
from tests.vectors import VECTORS

RECEIVED = datetime(2026, 4, 9, 14, 30, 1, 250000, tzinfo=UTC)


def encode(body: bytes) -> tuple[bytes, str]:
    webhook = parse(body, "header-id")
    destination = Router.for_families("mytpe", {"transaction", "pay_link"}).resolve(webhook)
    return envelope.encode(webhook, destination, signed_at=1775745000, received_at=RECEIVED), destination.key


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_official_sdk_parses_the_structured_event(vector) -> None:
    value, key = encode(vector.body)
    message = KafkaMessage(headers={"content-type": envelope.CONTENT_TYPE}, key=key.encode(), value=value)
    event = from_structured_event(message)
    original = json.loads(vector.body)
    family = vector.event.split(".")[0]
    assert event.get_specversion() == "1.0"
    assert event.get_id() == original["delivery_id"]
    assert event.get_type() == f"app.mytpe.pay.{vector.event}"
    assert event.get_source() == "mytpe-pay/abc123-def456"
    assert event.get_subject() == original["data"][family]["id"]
    assert event.get_time() == datetime.fromisoformat(original["timestamp"])
    assert event.get_datacontenttype() == "application/json"
    assert event.get_extension("partitionkey") == key == original["data"][family]["id"]
    assert event.get_extension("mytpereceivedat") == "2026-04-09T14:30:01.250000Z"
    assert event.get_data() == original["data"]


def test_data_is_spliced_byte_for_byte() -> None:
    value, _ = encode(VECTORS[2].body)
    assert value.endswith(b',"data":' + parse(VECTORS[2].body, "h").data_bytes + b"}")
    assert b'"amount":1200.50' in value
    assert json.loads(value)["data"]["transaction"]["amount"] == 1200.5


@pytest.mark.parametrize(
    ("payload_time", "expected"),
    [
        ("2026-04-09T14:30:00.000000Z", "2026-04-09T14:30:00.000000Z"),
        ("2026-04-09T15:30:00+01:00", "2026-04-09T15:30:00+01:00"),
        ("2026-04-09", "2026-04-09T14:30:00.000000Z"),
        ("2026-13-45T99:00:00Z", "2026-04-09T14:30:00.000000Z"),
        (None, "2026-04-09T14:30:00.000000Z"),
    ],
)
def test_time_falls_back_to_the_signed_timestamp(payload_time: str | None, expected: str) -> None:
    assert envelope.event_time(payload_time, 1775745000) == expected


def test_source_without_instance_and_no_subject_without_entity() -> None:
    body = b'{"delivery_id":"d-9","event":"pay_link.deleted","timestamp":"2026-04-09T14:30:00Z","data":{}}'
    value, key = encode(body)
    event = json.loads(value)
    assert event["source"] == "mytpe-pay"
    assert "subject" not in event
    assert key == "d-9" == event["partitionkey"]
