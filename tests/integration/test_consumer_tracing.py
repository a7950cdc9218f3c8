"""examples/transaction_ledger.py continues the relay's trace over the real broker: a relay process and the
example both export OTLP/HTTP to one receiver on 127.0.0.1 (the example's own exporter set-up, not the test's)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.helpers import sample, signed_headers
from tests.integration.conftest import free_port, read_topic
from tests.integration.test_cli import RELAY, relay_env
from tests.integration.test_consumer_example import EXAMPLE
from tests.otlp_receiver import CONSUMER, Receiver, otlp_receiver
from tests.servers import wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def relayed(kafka: Any, receiver: Receiver) -> Iterator[tuple[dict[str, str], str]]:
    """A traced relay took one webhook: its env and the delivery id. The relay has exited (spans flushed)."""
    port = free_port()
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env = relay_env(kafka.bootstrap, f"tk{port}", RELAY_PORT=str(port), OTEL_SERVICE_NAME="relay", **tracing)
    relay = subprocess.Popen([*RELAY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, relay, why_exited=lambda: relay.stderr.read() if relay.stderr else "")
        body, delivery_id = sample("transaction.completed")
        headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
        answer = httpx.post(f"{url}/webhooks/mytpe", content=body, headers=headers, timeout=30).json()
        assert answer["status"] == "accepted"
    finally:
        relay.terminate()
        relay.communicate(timeout=60)
    yield env, delivery_id


async def test_the_example_ledgers_span_joins_the_webhooks_trace(
    kafka: Any, receiver: Receiver, relayed: tuple[dict[str, str], str]
) -> None:
    env, delivery_id = relayed
    topic = f"{env['RELAY_TOPIC_PREFIX']}.transaction"
    (record,) = await read_topic(kafka.bootstrap, topic)
    hop = record.headers["traceparent"].decode().split("-")
    creation = orjson.loads(record.value)["traceparent"].split("-")
    command = [sys.executable, str(EXAMPLE), "--bootstrap", kafka.bootstrap, "--topic", topic, "--idle-timeout", "2"]
    consumer_env = {**env, "OTEL_SERVICE_NAME": "ledger"}
    done = await asyncio.to_thread(
        subprocess.run, command, env=consumer_env, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    name = f"process {topic}"
    span = (await asyncio.to_thread(receiver.trace, hop[1], {name}))[name]
    assert (span.service, span.kind, span.parent_span_id) == ("ledger", CONSUMER, hop[2])
    assert span.links == [(creation[1], creation[2])]
    assert span.attributes["messaging.consumer.group.name"] == "example-transaction-ledger"
    assert span.attributes["messaging.kafka.offset"] == record.offset
    assert span.attributes["cloudevents.event_id"] == delivery_id
