"""The shipped JSON Schemas: valid draft-07, accepting every record the relay builds, refusing broken ones.

Records that went through the real broker are validated in tests/integration (test_kafka_e2e, test_replay).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft7Validator

from relay import envelope, schemas
from relay.mytpe import samples
from relay.mytpe.payload import parse
from relay.routing import Router
from tests.schemas import errors, record_errors
from tests.vectors import VECTORS

ROUTER = Router.for_families("mytpe", ["transaction", "pay_link", "payment_link"])


def record_value(body: bytes) -> bytes:
    webhook = parse(body, "header-id")
    return envelope.encode(webhook, ROUTER.resolve(webhook), signed_at=1775745000, received_at=datetime.now(UTC))


def test_every_schema_is_valid_draft_7_and_every_file_is_referenced() -> None:
    for name in schemas.names():
        Draft7Validator.check_schema(schemas.load(name))
    assert set(schemas.names()) == {
        "cloudevent.json", "transaction-data.json", "pay-link-data.json",
        "transaction.json", "pay-link.json", "instance.json",
    }  # fmt: skip


@pytest.mark.parametrize("event", samples.EVENTS)
def test_records_of_every_event_type_validate(event: str) -> None:
    assert schemas.data_schema(event) is not None
    for seed in range(25):
        assert record_errors(record_value(samples.build(event, seed=seed))) == []


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_the_spec_vectors_validate(vector: Any) -> None:
    assert record_errors(record_value(vector.body)) == []


def test_unknown_members_are_tolerated_at_every_level() -> None:
    event = json.loads(record_value(VECTORS[0].body))
    event["futureattribute"] = "x"
    event["data"]["refund"] = {"id": "r-1"}
    event["data"]["transaction"]["installments"] = 3
    event["data"]["pay_link"]["currency"] = "DZD"
    event["data"]["instance"]["status"] = "active"
    assert record_errors(json.dumps(event).encode()) == []


def test_money_may_be_a_decimal_string_and_metadata_an_empty_php_array() -> None:
    event = json.loads(record_value(VECTORS[2].body))
    event["data"]["transaction"]["amount"] = "1200.50"
    event["data"]["transaction"]["metadata"] = []
    assert record_errors(json.dumps(event).encode()) == []


BROKEN: list[tuple[str, Any, str]] = [
    ("specversion", "0.3", "specversion: '1.0' was expected"),
    ("type", "com.example.transaction.completed", "type: 'com.example.transaction.completed' does not match"),
    ("time", "yesterday", "time: 'yesterday' does not match"),
    ("data.transaction.status", "paid", "data/transaction/status: 'paid' is not one of"),
    ("data.transaction.amount", "5 000", "data/transaction/amount: '5 000' is not valid under any"),
    ("data.transaction.metadata", ["x"], "data/transaction/metadata: ['x'] is not valid under any"),
    ("data.pay_link.amount", "free", "data/pay_link/amount: 'free' is not valid under any"),
    ("data.pay_link.payment_mode", "twice", "data/pay_link/payment_mode: 'twice' is not one of"),
    ("data.instance.id", 7, "data/instance/id: 7 is not of type 'string'"),
]


@pytest.mark.parametrize(("path", "value", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_records_are_refused_with_the_member_named(path: str, value: Any, message: str) -> None:
    event = json.loads(record_value(VECTORS[0].body))
    *parents, last = path.split(".")
    target = event
    for name in parents:
        target = target[name]
    target[last] = value
    problems = record_errors(json.dumps(event).encode())
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems


def test_a_missing_required_member_is_refused() -> None:
    event = json.loads(record_value(VECTORS[1].body))
    del event["data"]["pay_link"]["id"]
    del event["partitionkey"]
    assert sorted(record_errors(json.dumps(event).encode())) == [
        "<root>: 'partitionkey' is a required property",
        "data/pay_link: 'id' is a required property",
    ]


def test_newer_generation_events_are_checked_on_the_envelope_only() -> None:
    body = b'{"delivery_id":"d","event":"payment_link.exhausted","data":{"payment_link":{"id":"pl-1","status":"x"}}}'
    assert schemas.data_schema("payment_link.exhausted") is None
    assert record_errors(record_value(body)) == []
    assert errors(schemas.ENVELOPE, {**json.loads(record_value(body)), "data": []}) == [
        "data: [] is not of type 'object'"
    ]


def test_a_reverified_record_validates_and_says_so() -> None:
    webhook = parse(VECTORS[0].body, "header-id")
    value = envelope.encode(
        webhook, ROUTER.resolve(webhook), signed_at=1775745000, received_at=datetime.now(UTC), reverified=True
    )
    assert record_errors(value) == []
    assert json.loads(value)["mytpereverified"] is True
    assert "mytpereverified" not in json.loads(record_value(VECTORS[0].body))
    broken = value.replace(b'"mytpereverified":true', b'"mytpereverified":"yes"')
    assert record_errors(broken) != []


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BAD_TRACEPARENTS = [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version the relay does not write
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
    "",
]


def test_the_distributed_tracing_attributes_validate_when_present() -> None:
    event = json.loads(record_value(VECTORS[0].body))
    assert "traceparent" not in event, "tracing off: no attribute at all"
    event["traceparent"] = TRACEPARENT
    assert record_errors(json.dumps(event).encode()) == []
    event["traceparent"] = TRACEPARENT[:-2] + "03"  # sampled, and a random trace id (W3C Level 2): the SDK's
    assert record_errors(json.dumps(event).encode()) == []
    # the relay never writes the CE `tracestate` (its traces start at the relay): the schema does not declare it
    assert "traceparent" in schemas.load(schemas.ENVELOPE)["properties"]
    assert "tracestate" not in schemas.load(schemas.ENVELOPE)["properties"]


@pytest.mark.parametrize("value", [*BAD_TRACEPARENTS, 7])
def test_a_malformed_or_all_zero_traceparent_is_refused(value: Any) -> None:
    event = {**json.loads(record_value(VECTORS[0].body)), "traceparent": value}
    problems = record_errors(json.dumps(event).encode())
    assert len(problems) == 1 and problems[0].startswith("traceparent: "), problems
