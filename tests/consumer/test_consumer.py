"""The consumer kit: typed parsing, once-only handling, status precedence. Pure logic; the example
consumer runs against the real broker in tests/integration/test_consumer_example.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from relay import envelope
from relay.consumer import (
    Idempotent,
    MemorySeenStore,
    NotAnEvent,
    Verdict,
    compare,
    parse_event,
    parse_record,
    should_apply,
)
from relay.mytpe.payload import parse
from relay.routing import Router
from tests.vectors import VECTORS

RECEIVED = datetime(2026, 4, 9, 14, 30, 1, 250000, tzinfo=UTC)


@dataclass
class FakeRecord:
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("content-type", envelope.CONTENT_TYPE)])


def record_of(body: bytes, families: tuple[str, ...] = ("transaction", "pay_link")) -> FakeRecord:
    webhook = parse(body, "header-id")
    destination = Router.for_families("mytpe", families).resolve(webhook)
    return FakeRecord(envelope.encode(webhook, destination, signed_at=1775745000, received_at=RECEIVED))


def test_a_transaction_record_becomes_typed_with_exact_money() -> None:
    event = parse_record(record_of(VECTORS[0].body))
    assert (event.id, event.event, event.family) == (
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "transaction.completed",
        "transaction",
    )
    assert event.type == "app.mytpe.pay.transaction.completed"
    assert (event.source, event.subject, event.partition_key) == (
        "mytpe-pay/abc123-def456",
        event.subject,
        event.subject,
    )
    assert event.time == datetime(2026, 4, 9, 14, 30, tzinfo=UTC)
    assert event.received_at == RECEIVED
    tx = event.transaction
    assert tx is not None
    assert (tx.id, tx.status, tx.amount) == ("9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d", "completed", Decimal("5000.00"))
    assert str(tx.amount) == "5000.00"
    assert tx.customer is not None and tx.customer.email == "karim@example.com"
    assert tx.metadata == {"reference": "REF-2026-001"}
    assert tx.updated_at == datetime(2026, 4, 9, 14, 30, tzinfo=UTC)
    assert event.pay_link is not None and event.pay_link.max_payments is None
    assert event.instance is not None and event.instance.name == "Cabinet Dr. Ahmed"


def test_nulls_and_php_escapes_survive() -> None:
    event = parse_record(record_of(VECTORS[2].body))
    tx = event.transaction
    assert tx is not None
    assert (tx.order_id, tx.approval_code, tx.amount) == (None, None, Decimal("1200.50"))
    assert tx.gateway_message == "Paiement refusé"
    assert tx.metadata == {"return_url": "https://shop.example.dz/orders/42"}
    assert tx.customer is not None and tx.customer.name is None
    assert event.pay_link is not None and event.pay_link.amount is None


def test_a_pay_link_event_has_no_transaction() -> None:
    event = parse_record(record_of(VECTORS[1].body))
    assert event.transaction is None
    assert event.pay_link is not None
    assert (event.pay_link.status, event.pay_link.remaining_payments) == ("closed", 0)


def test_newer_generation_events_parse_with_their_data_kept() -> None:
    body = b'{"delivery_id":"d-7","event":"payment_link.exhausted","data":{"payment_link":{"id":"pl-1"},"x":1.10}}'
    event = parse_record(record_of(body, ("payment_link",)))
    assert (event.event, event.subject, event.transaction, event.pay_link) == (
        "payment_link.exhausted",
        "pl-1",
        None,
        None,
    )
    assert event.data == {"payment_link": {"id": "pl-1"}, "x": Decimal("1.10")}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (FakeRecord(b'{"event":"x"}', [("reason", b"malformed_json")]), "content-type"),
        (FakeRecord(None), "no value"),
        (FakeRecord(b"{not json"), "not JSON"),
        (FakeRecord(b'{"specversion":"0.3"}'), "CloudEvents 1.0"),
        (FakeRecord(b'{"specversion":"1.0","type":"com.example.x","data":{}}'), "not a MyTPE event"),
        (FakeRecord(b'{"specversion":"1.0","type":"app.mytpe.pay.a.b","data":{},"source":"s","time":"t"}'), "id"),
        (
            FakeRecord(b'{"specversion":"1.0","type":"app.mytpe.pay.a.b","data":{},"id":"i","source":"s","time":"t"}'),
            "time",
        ),
    ],
)
def test_anything_else_is_not_an_event(record: FakeRecord, message: str) -> None:
    with pytest.raises(NotAnEvent, match=message):
        parse_record(record)


def test_a_bad_amount_is_not_an_event() -> None:
    value = record_of(VECTORS[0].body).value
    assert value is not None
    with pytest.raises(NotAnEvent, match="malformed"):
        parse_event(value.replace(b'"amount":5000.00', b'"amount":"5 000"', 1))


async def test_an_id_is_handled_once_and_only_marked_after_success() -> None:
    calls: list[str] = []

    async def handler() -> str:
        calls.append("x")
        if len(calls) == 1:
            raise RuntimeError("database down")
        return "ok"

    idempotent = Idempotent()
    with pytest.raises(RuntimeError):
        await idempotent.run("id-1", handler)
    assert await idempotent.run("id-1", handler) == (True, "ok")
    assert await idempotent.run("id-1", handler) == (False, None)
    assert await idempotent.run("id-2", handler) == (True, "ok")
    assert len(calls) == 3


async def test_concurrent_copies_wait_for_the_first() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return calls

    idempotent = Idempotent()
    first = asyncio.create_task(idempotent.run("id", slow))
    await started.wait()
    copies = [asyncio.create_task(idempotent.run("id", slow)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(copy.done() for copy in copies)
    release.set()
    assert await first == (True, 1)
    assert [await copy for copy in copies] == [(False, None)] * 3
    assert calls == 1


async def test_when_the_first_copy_fails_the_waiting_one_handles_it() -> None:
    attempts = 0
    gate = asyncio.Event()

    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await gate.wait()
            raise RuntimeError("first attempt fails")
        return attempts

    idempotent = Idempotent()
    first = asyncio.create_task(idempotent.run("id", flaky))
    await asyncio.sleep(0)
    second = asyncio.create_task(idempotent.run("id", flaky))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    assert await second == (True, 2)


async def test_the_memory_store_is_bounded_by_size_and_age() -> None:
    now = [0.0]
    store = MemorySeenStore(max_entries=3, ttl=10, clock=lambda: now[0])
    for name in "abcd":
        await store.mark(name)
    assert len(store) == 3
    assert [await store.seen(n) for n in "abcd"] == [False, True, True, True]
    now[0] = 10.0
    assert not await store.seen("b")
    await store.mark("e")
    assert len(store) == 1
    with pytest.raises(ValueError, match="positive"):
        MemorySeenStore(max_entries=0)


@pytest.mark.parametrize(
    ("current", "incoming", "verdict"),
    [
        (None, "pending", Verdict.APPLY),
        (None, "completed", Verdict.APPLY),
        ("pending", "processing", Verdict.APPLY),
        ("processing", "completed", Verdict.APPLY),
        ("pending", "refused", Verdict.APPLY),
        ("completed", "pending", Verdict.STALE),
        ("completed", "processing", Verdict.STALE),
        ("failed", "processing", Verdict.STALE),
        ("processing", "pending", Verdict.STALE),
        ("completed", "completed", Verdict.SAME),
        ("pending", "pending", Verdict.SAME),
        ("completed", "refused", Verdict.CONFLICT),
        ("failed", "completed", Verdict.CONFLICT),
        (None, "paid", Verdict.UNKNOWN),
        ("paid", "completed", Verdict.UNKNOWN),
    ],
)
def test_status_precedence(current: str | None, incoming: str, verdict: Verdict) -> None:
    assert compare(current, incoming) is verdict
    assert should_apply(current, incoming) is (verdict is Verdict.APPLY)
