"""Review of issue 26 (tracing): edge cases, each a failing test on main 26ba5a7."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from relay import tracing
from relay.dedupe.memory import MemoryDedupeStore
from relay.http.app import create_app
from relay.metrics import Metrics
from relay.ops.captured import Captured
from relay.ops.replay import _prepare
from relay.pipeline.compose import compose
from relay.routing import Route
from relay.settings import Settings
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import signed_headers

NOW = 1775745000
URL = "/webhooks/mytpe"
TOKEN = "s3cr3t-collector-token"


@pytest.fixture
def traced_app(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> tuple[TestClient, FakePublisher, InMemorySpanExporter, Tracer]:
        exporter = InMemorySpanExporter()
        tracer = Tracer.build(TracingConfig(), SimpleSpanProcessor(exporter))
        publisher = FakePublisher(fail_with=kafka_down())
        app = create_app(settings_factory(**overrides), publisher=publisher, clock=lambda: float(NOW), tracer=tracer)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client, publisher, exporter, tracer

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def test_a_dlq_record_drained_from_the_spool_then_replayed_keeps_the_request_as_creation_context(
    traced_app: Callable[..., Any], settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """docs/guarantees.md §10: the CloudEvent's `traceparent` is the webhook's request span, and a DLQ
    replay and a spool drain keep it. A quarantined delivery spooled during an outage, drained, then
    replayed from the DLQ once its route exists, must still name the request span."""
    settings = settings_factory(spool_dir=tmp_path, spool_drain_seconds=0.2)
    client, publisher, exporter, tracer = traced_app(**{k: getattr(settings, k) for k in ("spool_dir",)})
    body = b'{"delivery_id":"tr-dlq-0","event":"trader.onboarding_changed","data":{"trader":{"id":"tr-1"}}}'
    headers = signed_headers(body, timestamp=NOW, delivery_id="tr-dlq-0", event="trader.onboarding_changed")
    answer = client.post(URL, content=body, headers=headers).json()
    assert (answer["status"], answer.get("spooled")) == ("quarantined", True), answer
    (server,) = [span for span in exporter.get_finished_spans() if span.name.startswith("POST ")]
    request_context = (
        f"00-{server.context.trace_id:032x}-{server.context.span_id:016x}-{int(server.context.trace_flags):02x}"
    )
    publisher.fail_with = None  # Kafka is back: the in-process drainer sends the spooled DLQ record
    deadline = time.monotonic() + 30
    while not publisher.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    (dlq,) = publisher.sent
    entry = Captured("dlq[0]@0", {n.lower(): v.decode() for n, v in dlq.headers}, dlq.value, None)
    replaying = settings_factory(topic_prefix=settings.topic_prefix, routes=(Route("trader", "kyc"),))
    parts = compose(
        replaying,
        publisher=FakePublisher(),
        dedupe=MemoryDedupeStore(ttl=3600, max_entries=1000),
        metrics=Metrics(),
        tracer=tracer,
    )
    with tracer.root("replay"):
        step = _prepare(parts.relay, parts.sources.current, entry, from_dlq=True, dry_run=False, now=float(NOW))
    assert not isinstance(step, str), step
    send = step[1]
    assert isinstance(send, partial)
    record = send.args[1]
    created = orjson.loads(record.value)["traceparent"]
    drains = [s.context.span_id for s in exporter.get_finished_spans() if s.name.startswith("drain ")]
    assert created == request_context, (created, request_context, [f"{d:016x}" for d in drains])


def test_nothing_allocated_or_called_per_request_when_off() -> None:
    """relay/tracing/spans.py: 'nothing is allocated'; the issue: 'unset, ... the cost is nil'. Count the
    Python-level calls a request's tracing call sites make when the tracer is None."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        with tracing.child(None, "verify"):
            pass
        with tracing.child(None, "dedupe claim"):
            pass
        with tracing.use(None, None):
            pass
        tracing.acked(None, 0, 0)
        with tracing.child(None, "dedupe commit"):
            pass
        tracing.traceparent(None)
        tracing.headers(None)
    finally:
        sys.setprofile(None)
    assert calls <= 1, f"{calls} Python calls per request with tracing off"
