"""Tracing end to end: a relay process exports OTLP/HTTP to a receiver on 127.0.0.1, over the real broker;
the consumer kit's span, exported to the same receiver, joins the webhook's trace.

The webhook's trace holds its request, verify, dedupe and send spans; the record read back carries a
`traceparent` header of that trace and the CloudEvent's `traceparent` (its creation context). A replay
from the DLQ and a spool drain send the record on under a trace of their own, linked to the original,
and leave the CloudEvent's creation context as it was.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from relay.consumer import parse_event, process_span
from relay.metrics import Metrics
from relay.spool.spool import Spool
from relay.spool.store import Pending
from tests.helpers import sample, signed_headers
from tests.integration.conftest import free_port, read_topic
from tests.integration.test_cli import RELAY, relay_env, run
from tests.otlp_receiver import CONSUMER, PRODUCER, SERVER, Receiver, otlp_receiver
from tests.schemas import record_errors
from tests.servers import wait_ready

pytestmark = pytest.mark.integration
ORIGINAL = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def traced_env(kafka: Any, receiver: Receiver, prefix: str, **extra: str) -> dict[str, str]:
    return relay_env(
        kafka.bootstrap,
        prefix,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="relay-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms: export soon, so the test waits less
        **extra,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def traced(kafka: Any, receiver: Receiver) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    port = free_port()
    env = traced_env(
        kafka, receiver, f"tr{port}", RELAY_PORT=str(port), RELAY_LOG_FORMAT="json", RELAY_LOG_LEVEL="DEBUG"
    )
    process = subprocess.Popen([*RELAY, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, why_exited=lambda: process.stderr.read() if process.stderr else "")
        yield url, env, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def post(url: str, body: bytes, delivery_id: str, event: str = "transaction.completed") -> dict[str, Any]:
    headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id, event=event)
    answer: dict[str, Any] = httpx.post(f"{url}/webhooks/mytpe", content=body, headers=headers, timeout=30).json()
    return answer


def consume(receiver: Receiver, record: Any) -> None:
    """The consumer kit handles `record` in a span of its own, exported to the same collector."""
    provider = TracerProvider(resource=Resource.create({"service.name": "ledger"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")))
    consumed = SimpleNamespace(
        topic=record.topic, partition=record.partition, offset=record.offset, headers=list(record.headers.items())
    )
    with process_span(consumed, event=parse_event(record.value), tracer=provider.get_tracer("relay.consumer")):
        pass
    provider.shutdown()


def ids(traceparent: bytes | str) -> tuple[str, str]:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    _, trace_id, span_id, _ = text.split("-")
    return trace_id, span_id


async def test_a_webhook_trace_reaches_the_collector_and_its_record(kafka: Any, receiver: Receiver, traced) -> None:
    url, env, process = traced
    body, delivery_id = sample("transaction.completed")
    assert post(url, body, delivery_id)["status"] == "accepted"
    topic = f"{env['RELAY_TOPIC_PREFIX']}.transaction"
    (record,) = await read_topic(kafka.bootstrap, topic)
    header = record.headers["traceparent"]
    event = orjson.loads(record.value)
    assert event["traceparent"] == header.decode()  # one hop: the creation context is the header's
    assert record_errors(record.value) == []  # the contract (relay/schemas) knows the attribute
    trace_id, span_id = ids(header)
    names = {"POST /webhooks/mytpe", "verify", "dedupe claim", f"send {topic}", "dedupe commit"}
    spans = await asyncio.to_thread(receiver.trace, trace_id, names)
    server = spans["POST /webhooks/mytpe"]
    assert (server.kind, server.span_id, server.parent_span_id) == (SERVER, span_id, "")
    assert server.service == "relay-under-test"
    assert server.attributes["mytpe.delivery_id"] == delivery_id
    assert server.attributes["http.response.status_code"] == 200
    send = spans[f"send {topic}"]
    assert send.kind == PRODUCER
    assert send.parent_span_id == span_id
    assert send.attributes["messaging.kafka.destination.partition"] == record.partition
    assert all(span.parent_span_id == span_id for name, span in spans.items() if span is not server)
    await asyncio.to_thread(consume, receiver, record)
    processed = (await asyncio.to_thread(receiver.trace, trace_id, {f"process {topic}"}))[f"process {topic}"]
    assert (processed.service, processed.kind, processed.parent_span_id) == ("ledger", CONSUMER, span_id)
    assert processed.links == [(trace_id, span_id)], "linked to the CloudEvent's creation context"
    assert processed.attributes["cloudevents.event_id"] == delivery_id
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (request_line,) = [line for line in lines if line.get("delivery_id") == delivery_id]
    assert (request_line["trace_id"], request_line["span_id"]) == (trace_id, span_id)


async def test_a_replay_from_the_dlq_keeps_the_creation_context(kafka: Any, receiver: Receiver, traced) -> None:
    url, env, _ = traced
    body = b'{"delivery_id":"tr-dlq-0","event":"trader.onboarding_changed","data":{"trader":{"id":"tr-1"}}}'
    assert post(url, body, "tr-dlq-0", event="trader.onboarding_changed")["status"] == "quarantined"
    prefix = env["RELAY_TOPIC_PREFIX"]
    (dlq,) = await read_topic(kafka.bootstrap, f"{prefix}.dlq")
    created = dlq.headers["traceparent"].decode()
    replayed = run(["replay", "--from-dlq"], {**env, "RELAY_ROUTES": "trader=kyc"})
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (record,) = await read_topic(kafka.bootstrap, f"{prefix}.kyc")
    assert orjson.loads(record.value)["traceparent"] == created, "the CloudEvent keeps its creation context"
    assert record_errors(record.value) == []
    hop = record.headers["traceparent"].decode()
    assert hop != created
    trace_id, span_id = ids(hop)
    spans = await asyncio.to_thread(receiver.trace, trace_id, {"replay"})
    assert spans["replay"].span_id == span_id
    assert spans["replay"].links == [ids(created)]


async def test_a_spool_drain_keeps_the_creation_context(kafka: Any, receiver: Receiver, tmp_path: Path) -> None:
    prefix = f"tr{free_port()}"
    topic = f"{prefix}.transaction"
    value = orjson.dumps({"specversion": "1.0", "id": "spooled-1", "traceparent": ORIGINAL, "data": {}})
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    await spool.put(Pending(topic, b"k-1", value, [("content-type", b"json"), ("traceparent", ORIGINAL.encode())]))
    await spool.close()
    env = traced_env(kafka, receiver, prefix)
    drained = run(["spool", "drain", "--dir", str(tmp_path)], env)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    (record,) = await read_topic(kafka.bootstrap, topic)
    assert record.value == value, "a drain sends the CloudEvent unchanged"
    hop = record.headers["traceparent"].decode()
    assert hop != ORIGINAL
    trace_id, span_id = ids(hop)
    spans = await asyncio.to_thread(receiver.trace, trace_id, {f"drain {topic}"})
    drain = spans[f"drain {topic}"]
    assert (drain.span_id, drain.kind, drain.links) == (span_id, PRODUCER, [ids(ORIGINAL)])


def test_check_reports_tracing_without_its_headers(kafka: Any, receiver: Receiver) -> None:
    env = traced_env(kafka, receiver, f"tr{free_port()}", OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer tok-7Qz")
    result = run(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("tracing:")]
    assert line.startswith(f"tracing: on (service relay-under-test, OTLP/HTTP to {receiver.endpoint}/v1/traces")
    assert "headers set (not shown)" in line
    assert "tok-7Qz" not in result.stdout + result.stderr
