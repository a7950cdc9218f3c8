"""examples/transaction_ledger.py against the real broker, fed by a real relay: out-of-order statuses,
a re-published copy of an event, and a record that is not an event."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest
from aiokafka import AIOKafkaProducer

from relay.mytpe import samples
from relay.settings import Settings
from tests.helpers import signed_headers
from tests.integration.conftest import read_topic, running_relay

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transaction_ledger.py"


async def test_the_example_ledger_keeps_the_latest_status_once(kafka, kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings()
    topic = f"{settings.topic_prefix}.transaction"
    now = datetime.now(UTC)
    # Transaction A (seed 1) arrives completed, then a stale `pending`; B (seed 2) completes, then is refused.
    sends = [("transaction.processing", 1), ("transaction.completed", 1), ("transaction.pending", 1)]
    sends += [("transaction.completed", 2), ("transaction.refused", 2)]
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        for number, (event, seed) in enumerate(sends):
            delivery_id = f"delivery-{number}"
            body = samples.build(event, delivery_id=delivery_id, seed=seed, now=now + timedelta(seconds=number))
            headers = signed_headers(body, timestamp=int(now.timestamp()), delivery_id=delivery_id, event=event)
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            assert response.json()["status"] == "accepted"
    relayed = await read_topic(kafka.bootstrap, topic)
    copy = next(r for r in relayed if json.loads(r.value)["id"] == "delivery-1")
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:  # the same CloudEvent again (as a replay would), then something that is not an event
        await producer.send_and_wait(topic, copy.value, key=copy.key, headers=list(copy.headers.items()))
        await producer.send_and_wait(topic, b"not an event", key=copy.key)
    finally:
        await producer.stop()

    command = [sys.executable, str(EXAMPLE), "--bootstrap", kafka.bootstrap, "--topic", topic]
    done = await asyncio.to_thread(
        subprocess.run, [*command, "--idle-timeout", "3"], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    *lines, last = [json.loads(line) for line in done.stdout.splitlines()]
    verdicts = sorted((line["id"], line["verdict"]) for line in lines if "verdict" in line)
    assert verdicts == [
        ("delivery-0", "apply"),
        ("delivery-1", "apply"),
        ("delivery-1", "duplicate"),  # the re-published copy
        ("delivery-2", "stale"),  # pending after completed
        ("delivery-3", "apply"),
        ("delivery-4", "conflict"),  # refused after completed: final stays, flagged
    ]
    assert [line["skipped"] for line in lines if "skipped" in line] == [
        "not a structured-mode CloudEvent (no cloudevents content-type header)"
    ]
    tx_a = json.loads(samples.build("transaction.completed", seed=1))["data"]["transaction"]["id"]
    tx_b = json.loads(samples.build("transaction.completed", seed=2))["data"]["transaction"]["id"]
    assert last["ledger"] == {tx_a: "completed", tx_b: "completed"}
    conflict = {"id": "delivery-4", "event": "transaction.refused", "why": "conflict: completed then refused"}
    assert last["attention"] == [conflict]
    assert done.stderr.count("ATTENTION: ") == 1  # the conflict goes to a person, said once

    again = await asyncio.to_thread(
        subprocess.run, [*command, "--idle-timeout", "2"], capture_output=True, text=True, timeout=60, check=False
    )
    assert again.stdout.splitlines() == ['{"attention": [], "ledger": {}}'], "offsets were committed: none read twice"
