"""`mytpe-relay tail`'s rendering and its --max, on records made here (the command against a broker:
tests/integration/test_cli.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from relay.ops.tail import _print_records, render

CLOUDEVENT = b'{"specversion":"1.0","id":"d-1","type":"mytpe.transaction.completed","data":{"amount":5000.00}}'
JSON_CE = b"application/cloudevents+json; charset=utf-8"


def record(value: bytes | None, **headers: bytes) -> SimpleNamespace:
    pairs = [(name.replace("_", "-"), v) for name, v in headers.items()]
    return SimpleNamespace(topic="mytpe.dlq", partition=0, offset=7, key=b"d-1", value=value, headers=pairs)


def test_a_dlq_record_that_holds_a_cloudevent_shows_its_reason() -> None:
    """Review finding: a family record the spool's drainer moved to the DLQ keeps its CloudEvent content type,
    so tail rendered it as a CloudEvent and hid its `reason` and `kafka-error`, though commands.md says DLQ
    records are shown with their reason."""
    shown = render(record(CLOUDEVENT, content_type=JSON_CE, reason=b"kafka_refused", kafka_error=b"TooLarge"))
    assert "reason: kafka_refused" in shown and "TooLarge" in shown and "5000.00" in shown


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("value", [b"", None, b"{not json", DEEP, b'{"data":' + DEEP + b"}"])
def test_a_record_whose_value_is_not_its_content_type_is_shown_raw_not_a_traceback(value: bytes | None) -> None:
    """Review finding: a `spool_damaged` DLQ record with a CloudEvent content type and an empty value made tail
    die with a traceback (members() refused it)."""
    shown = render(record(value, content_type=JSON_CE))
    assert "mytpe.dlq[0]@7" in shown


async def test_max_prints_no_more_than_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    """Review finding: `--max 1` printed a whole poll's records (5)."""

    class Consumer:
        async def getmany(self, timeout_ms: int) -> dict[Any, list[SimpleNamespace]]:
            return {"tp": [record(b"x", reason=b"r") for _ in range(5)]}

    assert await _print_records(Consumer(), limit=1, timeout=5) == 1
    assert capsys.readouterr().out.count("--- ") == 1
