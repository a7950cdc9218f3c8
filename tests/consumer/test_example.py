"""examples/transaction_ledger.py's decisions, record by record (the real broker: tests/integration)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from relay import envelope
from relay.mytpe import samples
from relay.mytpe.payload import parse
from relay.routing import Router
from tests.consumer.test_consumer import RECEIVED

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transaction_ledger.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transaction_ledger", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("transaction_ledger", module)
    spec.loader.exec_module(module)
    return module


@dataclass
class Record:
    value: bytes
    offset: int
    partition: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("content-type", envelope.CONTENT_TYPE)])


def record(body: bytes, offset: int) -> Record:
    webhook = parse(body, f"header-{offset}")
    destination = Router.for_families("mytpe", ("transaction", "pay_link")).resolve(webhook)
    return Record(envelope.encode(webhook, destination, signed_at=1775745000, received_at=RECEIVED), offset)


async def test_what_no_rule_decides_is_kept_for_a_person_never_dropped(
    example: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding: `transaction.paid` of the newer API (status `paid`: UNKNOWN, or no legacy `transaction`)
    was marked handled, or skipped, and its offset committed: the payment never reached the ledger, unseen."""
    completed = samples.build("transaction.completed", delivery_id="d-1", seed=7)
    paid = completed.replace(b'"transaction.completed"', b'"transaction.paid"').replace(b'"completed"', b'"paid"')
    paid = paid.replace(b'"d-1"', b'"d-2"')
    bare = b'{"delivery_id":"d-3","event":"transaction.paid","data":{"payment":{"id":"p-1","status":"paid"}}}'
    dated = completed.replace(b'"d-1"', b'"d-4"').replace(b'"created_at":"', b'"created_at":"x', 1)
    ledger = example.Ledger()
    bodies = (completed, paid, bare, dated, dated, bare)  # the last two: copies, as a replay sends them
    lines = [await ledger.consume(record(body, n)) for n, body in enumerate(bodies)]
    assert [line.get("verdict", line.get("skipped")) for line in lines] == [
        "apply",
        "unknown",
        "transaction.paid carries no transaction",
        "same",
        "duplicate",
        "duplicate",
    ]
    assert [(entry["id"], entry["why"].split(":")[0]) for entry in ledger.attention] == [
        ("d-2", "unknown"),
        ("d-3", "no transaction this view can read"),
        ("d-4", "unreadable members"),
    ]
    assert capsys.readouterr().err.count("ATTENTION: ") == 3  # once per event: a copy is not flagged again


async def test_a_number_past_what_decimal_holds_is_applied_not_a_crash(example: Any) -> None:
    """Review finding: `1e-999999999999999999999` in a payment's metadata (the relay takes it) raised
    decimal.InvalidOperation out of `consume`: the partition stopped on that payment, in a crash loop."""
    completed = samples.build("transaction.completed", delivery_id="d-1", seed=7)
    odd = completed.replace(b'"metadata":{', b'"metadata":{"fee":1e-999999999999999999999,', 1)
    assert odd != completed
    ledger = example.Ledger()
    line = await ledger.consume(record(odd, 0))
    assert line["verdict"] == "apply" and ledger.attention == []


async def test_an_event_nested_past_what_python_parses_goes_to_a_person(example: Any) -> None:
    """Review finding: a payment the relay took (orjson reads 1,024 levels) with metadata nested past Python's
    parser (about 990) was a `skipped` line: the ledger moved on, and nobody was told. The relay refuses such a
    body now (relay.mytpe.payload.DEPTH); one written before that, or by another producer, is still read so."""
    completed = record(samples.build("transaction.completed", delivery_id="d-1", seed=7), 4)
    deep = completed.value.replace(b'"metadata":{', b'"metadata":{"x":' + b"[" * 1000 + b"]" * 1000 + b",", 1)
    assert deep != completed.value
    ledger = example.Ledger()
    line = await ledger.consume(Record(deep, 4))
    assert "nested too deep" in line["skipped"]
    assert ledger.attention == [{"record": "0/4", "why": line["skipped"]}]
    foreign = Record(b"not json", 5)  # a record that is not one of the relay's events is still skipped alone
    assert "not JSON" in (await ledger.consume(foreign))["skipped"] and len(ledger.attention) == 1
