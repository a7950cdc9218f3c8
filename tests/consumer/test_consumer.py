"""The consumer kit: typed parsing, once-only handling, status precedence. Pure logic; the example
consumer runs against the real broker in tests/integration/test_consumer_example.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from relay import envelope
from relay.consumer import (
    Idempotent,
    MemorySeenStore,
    NotAnEvent,
    NumberText,
    UnreadableEvent,
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
    assert (event.source, event.subject, event.partition_key) == (  # review: compared the subject with itself
        "mytpe-pay/abc123-def456",
        "9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d",
        "9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d",
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


async def test_concurrent_copies_wait_for_the_first_when_the_store_awaits() -> None:
    """Review finding: the first call made itself known only after the store's `seen`, so with a store that awaits
    (a database, as docs/consumers.md advises) a second copy passed the check too: the handler ran twice, the
    second call raised KeyError in place of its own outcome, and a third copy waiting on it waited forever."""

    class AwaitingStore(MemorySeenStore):
        async def seen(self, event_id: str) -> bool:
            await asyncio.sleep(0)
            return await super().seen(event_id)

        async def mark(self, event_id: str) -> None:
            await asyncio.sleep(0)
            await super().mark(event_id)

    calls = 0

    async def handler() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    idempotent = Idempotent(AwaitingStore())
    copies = [asyncio.create_task(idempotent.run("id", handler)) for _ in range(2)]
    await asyncio.sleep(0.005)
    late = asyncio.create_task(idempotent.run("id", handler))
    outcomes = await asyncio.wait_for(asyncio.gather(*copies, late, return_exceptions=True), 2)
    assert sorted(outcomes, key=repr) == [(False, None), (False, None), (True, 1)]
    assert calls == 1 and idempotent._running == {}


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
    for _ in range(5):  # the second has every chance to run the handler, had it not waited
        await asyncio.sleep(0)
    assert attempts == 1 and not second.done()
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    assert await second == (True, 2)


class FailingMark(MemorySeenStore):
    async def mark(self, event_id: str) -> None:
        raise ConnectionError("the store did not answer")


async def test_a_mark_that_fails_leaves_the_id_to_be_handled_again() -> None:
    """At least once, as the module says: the handler's effects are done, the mark is not, so the next copy
    runs the handler again (review: the words said once)."""
    calls = 0

    async def handler() -> int:
        nonlocal calls
        calls += 1
        return calls

    idempotent = Idempotent(FailingMark())
    with pytest.raises(ConnectionError):
        await idempotent.run("id", handler)
    with pytest.raises(ConnectionError):
        await idempotent.run("id", handler)
    assert calls == 2


class TableSeenStore:
    """The pattern docs/consumers.md gives: `seen` reads a table with a unique key on the id; the handler writes
    the id in the same transaction as its effects; `mark` has nothing left to do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def seen(self, event_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM handled WHERE id = ?", (event_id,)).fetchone() is not None

    async def mark(self, event_id: str) -> None:
        return None


async def test_with_the_mark_in_the_handlers_transaction_an_effect_is_applied_once() -> None:
    """What Idempotent alone cannot give: a crash after the effects and before the mark, and two consumers of one
    partition after a rebalance, both checking `seen` before either commits."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE ledger (event_id TEXT)")
    db.execute("CREATE TABLE handled (id TEXT PRIMARY KEY)")

    def crash() -> None:
        raise SystemError("the process died after its commit")

    async def apply(event_id: str, after: Callable[[], None] = lambda: None) -> None:
        await asyncio.sleep(0)  # the other consumer checks `seen` meanwhile
        with db:  # one transaction: the effect and the id, or neither
            db.execute("INSERT INTO ledger VALUES (?)", (event_id,))
            db.execute("INSERT INTO handled VALUES (?)", (event_id,))
        after()

    with pytest.raises(SystemError):
        await Idempotent(TableSeenStore(db)).run("a", lambda: apply("a", crash))
    assert await Idempotent(TableSeenStore(db)).run("a", lambda: apply("a")) == (False, None)  # the redelivery
    consumers = [Idempotent(TableSeenStore(db)) for _ in range(2)]  # two processes: no shared lock
    outcomes = await asyncio.gather(*(c.run("b", lambda: apply("b")) for c in consumers), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["IntegrityError", "tuple"]  # the second rolled back
    assert db.execute("SELECT event_id, COUNT(*) FROM ledger GROUP BY event_id").fetchall() == [("a", 1), ("b", 1)]


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


def _completed_with(old: bytes, new: bytes) -> bytes:
    value = record_of(VECTORS[0].body).value
    assert value is not None and old in value
    return value.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "member"),
    [
        (
            b'"created_at":"2026-04-09T14:25:00.000000Z"',
            b'"created_at":"2026-04-09 14:25:00"',
            "transaction.created_at",
        ),
        (b'"updated_at":"2026-04-09T14:30:00.000000Z"', b'"updated_at":1775745000', "transaction.updated_at"),
        (b'"max_payments":null', b'"max_payments":10.5', "pay_link.max_payments"),
        (b'"phone":"+213555123456"', b'"phone":213.5', "transaction.customer.phone"),
        (b'"order_id":"12345678"', b'"order_id":{"n":1}', "transaction.order_id"),
        (b'"amount":5000.00', b'"amount":"5 000"', "transaction.amount"),
        (b'"amount":5000.00', b'"amount":"NaN"', "transaction.amount"),
        (b'"amount":5000.00', b'"amount":"-Infinity"', "transaction.amount"),
        (b'"amount":5000.00', b'"amount":"5_000"', "transaction.amount"),
        (b'"amount":5000.00', b'"amount":" 5000 "', "transaction.amount"),
        (b'"id":"abc123-def456"', b'"id":{}', "instance.id"),
        # review of the above: a count of 1E+400000 took seconds to convert (1E+999999999: hours, or MemoryError)
        (b'"max_payments":null', b'"max_payments":1E+400000', "pay_link.max_payments"),
        (b'"max_payments":null', b'"max_payments":-3', "pay_link.max_payments"),  # the schema's minimum is 0
        (b'"amount":5000.00', b'"amount":1E+999999', "transaction.amount"),
        (b'"metadata":{"reference":"REF-2026-001"}', b'"metadata":"x"', "transaction.metadata"),
        (b'"id":"abc123-def456"', b'"name_only":"abc123-def456"', "instance.id"),  # present, but no id
        # review: an exponent past what Decimal holds raised InvalidOperation out of parse_record (not NotAnEvent),
        # and the example's consumer stopped its partition on that one payment, in a crash loop
        (b'"amount":5000.00', b'"amount":1e-999999999999999999999', "transaction.amount"),
        (b'"amount":5000.00', b'"amount":1E+999999999999999999999', "transaction.amount"),
        (b'"order_id":"12345678"', b'"order_id":1e999999999999999999999', "transaction.order_id"),
        (b'"id":"abc123-def456"', b'"id":""', "instance.id"),  # review: an empty id is no id
    ],
)
def test_a_member_of_data_the_typed_view_cannot_hold_is_none_and_named_never_a_skip(
    old: bytes, new: bytes, member: str
) -> None:
    """Review finding: any odd member of `data` made the whole event NotAnEvent, which rule 1 skips: a completed
    payment lost at the consumer for a date format or a float count. The envelope is the relay's and is checked;
    `data` is MyTPE's: a member the view cannot hold is None there, named in `malformed`, and kept in `data`."""
    event = parse_event(_completed_with(old, new))
    assert event.malformed == (member,)
    assert event.transaction is not None and event.transaction.status == "completed"
    view: object = event
    for name in member.split("."):
        view = getattr(view, name) if view is not None else None
    assert view in (None, {})  # metadata: an empty mapping


def test_a_transaction_present_without_a_readable_id_or_status_is_named() -> None:
    """Review of the reader: a transaction whose status was an object, and whose id was absent, was None with
    nothing named."""
    event = parse_event(
        _completed_with(b'"status":"completed"', b'"status":{"s":1}').replace(b'"id":"9a8b', b'"x":"9a8b')
    )
    assert event.transaction is None
    assert set(event.malformed) == {"transaction.id", "transaction.status"}


@pytest.mark.parametrize("member", [b'"id":"9a8b', b'"status":"completed'])
def test_an_empty_transaction_id_or_status_is_named(member: bytes) -> None:
    """Review finding: `"id":""` made a Transaction with an empty id, nothing named: the example filed two payments
    under one id, and the second was `stale`, ignored unseen."""
    value = record_of(VECTORS[0].body).value
    assert value is not None
    start = value.index(b'"transaction":')
    at = value.index(member, start) + len(member.split(b":")[0]) + 1
    end = value.index(b'"', at + 1) + 1
    event = parse_event(value[:at] + b'""' + value[end:])
    assert event.transaction is None
    assert event.malformed == ("transaction." + member.split(b'"')[1].decode(),)


def test_a_number_past_what_decimal_holds_is_kept_as_its_text() -> None:
    """Review finding: `1e-999999999999999999999` anywhere in `data` (MyTPE's metadata, say), which the relay takes
    (orjson reads it as 0.0), raised decimal.InvalidOperation out of parse_record: no event, no NotAnEvent."""
    huge = b"1e-999999999999999999999"
    event = parse_event(
        _completed_with(b'"reference":"REF-2026-001"', b'"reference":"REF-2026-001","fee":' + huge + b',"n":[2.5]')
    )
    assert event.malformed == ()
    assert event.transaction is not None and event.transaction.amount == Decimal("5000.00")
    fee = event.data["transaction"]["metadata"]["fee"]
    assert fee == huge.decode() and isinstance(fee, NumberText)
    assert event.data["transaction"]["metadata"]["n"] == [Decimal("2.5")]


def test_a_record_moved_to_the_dlq_is_not_an_event() -> None:
    """Review finding: a spooled record the drainer moves to the DLQ keeps its CloudEvent and content type, with a
    `reason` header: parse_record read it as a live event, which a DLQ monitor built on the kit would apply."""
    moved = record_of(VECTORS[0].body)
    moved.headers.append(("reason", b"kafka_refused"))
    with pytest.raises(NotAnEvent, match="DLQ"):
        parse_record(moved)


def test_a_record_whose_value_and_headers_are_methods_is_refused_loudly() -> None:
    """Review finding: a client whose record has `value()` and `headers()` methods (confluent-kafka's Message) had
    every record read as NotAnEvent, which the example skips: every payment skipped, no error."""

    class MethodRecord:
        def value(self) -> bytes | None:
            return record_of(VECTORS[0].body).value

        def headers(self) -> list[tuple[str, bytes]]:
            return [("content-type", envelope.CONTENT_TYPE)]

    with pytest.raises(TypeError, match="methods"):
        parse_record(MethodRecord())  # type: ignore[arg-type]


def test_an_integral_count_written_as_a_decimal_is_a_count() -> None:
    event = parse_event(_completed_with(b'"max_payments":null', b'"max_payments":10.0'))
    assert event.pay_link is not None and event.pay_link.max_payments == 10 and event.malformed == ()


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", None)],
        [("content-type", envelope.CONTENT_TYPE.decode())],  # a str value
        {"content-type": envelope.CONTENT_TYPE},  # a mapping
        [("content-type", memoryview(envelope.CONTENT_TYPE))],
        [("content-type",)],
        None,
    ],
    ids=["none-value", "str-value", "mapping", "memoryview", "one-tuple", "no-headers"],
)
def test_odd_header_shapes_are_read_or_not_an_event_never_a_crash(headers: object) -> None:
    """Review finding: parse_record raised AttributeError, ValueError or TypeError on header shapes process_span
    tolerates, and the example, which catches NotAnEvent, stopped its partition in a crash loop."""
    value = record_of(VECTORS[0].body).value
    try:
        event = parse_record(FakeRecord(value, headers))  # type: ignore[arg-type]
    except NotAnEvent:
        return
    assert event.transaction is not None


def test_data_nested_deeper_than_python_parses_is_not_an_event() -> None:
    """Review finding: orjson (the relay) takes 1,024 levels, Python's json about 990: RecursionError."""
    deep = b"[" * 3000 + b"]" * 3000
    value = record_of(VECTORS[0].body).value
    assert value is not None
    with pytest.raises(UnreadableEvent, match="nested"):  # a NotAnEvent a person must see
        parse_event(value.replace(b'"metadata":{"reference":"REF-2026-001"}', b'"metadata":' + deep, 1))


@pytest.mark.parametrize(
    "headers",
    [
        [["content-type", envelope.CONTENT_TYPE]],  # lists, as a record decoded from JSON has them
        [("content-type", b"application/json"), ("content-type", envelope.CONTENT_TYPE)],
        [(b"content-type", envelope.CONTENT_TYPE)],  # a bytes name
        [("Content-Type", envelope.CONTENT_TYPE.upper())],  # media types are case-insensitive
    ],
    ids=["list-pairs", "second-of-two", "bytes-name", "upper-case"],
)
def test_a_relay_event_under_other_header_shapes_is_read(headers: object) -> None:
    """Review of the header reader: these were NotAnEvent (the first two read before it), a payment skipped."""
    event = parse_record(FakeRecord(record_of(VECTORS[0].body).value, headers))  # type: ignore[arg-type]
    assert event.transaction is not None and event.transaction.status == "completed"


def test_a_record_without_headers_is_not_an_event() -> None:
    class Bare:
        value = record_of(VECTORS[0].body).value

    with pytest.raises(NotAnEvent):
        parse_record(Bare())  # type: ignore[arg-type]
