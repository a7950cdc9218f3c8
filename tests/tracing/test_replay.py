"""Spans and trace context of `mytpe-relay replay`: the creation context a DLQ record keeps through a spool
drain and a replay, each replay span ended, and no context read from a captured webhook request."""

from __future__ import annotations

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

from relay.dedupe.memory import MemoryDedupeStore
from relay.http.app import create_app
from relay.metrics import Metrics
from relay.ops.captured import Captured
from relay.ops.replay import Report, _prepare
from relay.pipeline.compose import compose
from relay.routing import Route
from relay.settings import Settings
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer
from relay.tracing.w3c import CREATED_HEADER
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import signed_headers
from tests.ops.test_replay_parts import FakeRelay, replayed

NOW = 1775745000
URL = "/webhooks/mytpe"
ORIGINAL = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def in_memory() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer.build(TracingConfig(), SimpleSpanProcessor(exporter)), exporter


@pytest.fixture
def traced_app(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> tuple[TestClient, FakePublisher, InMemorySpanExporter, Tracer]:
        tracer, exporter = in_memory()
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
    replayed from the DLQ once its route exists, must still name the request span (found by review: it named
    the drain's span, which the drainer had written over the record's `traceparent` header)."""
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
    written = dict(dlq.headers)
    assert written[CREATED_HEADER].decode() == request_context, "set once, kept by the drain"
    assert written["traceparent"].decode() != request_context, "the drain's own hop"
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
    assert isinstance(send, partial) and isinstance(send.args[0], partial)  # the publish, in its refusal's guard
    record = send.args[0].args[1]
    created = orjson.loads(record.value)["traceparent"]
    drains = [s.context.span_id for s in exporter.get_finished_spans() if s.name.startswith("drain ")]
    assert created == request_context, (created, request_context, [f"{d:016x}" for d in drains])


async def traced_replay(relay: FakeRelay, bodies: dict[str, bytes], tracer: Tracer, *, from_dlq: bool) -> Report:
    headers = {"traceparent": ORIGINAL, CREATED_HEADER: ORIGINAL}
    return await replayed(relay, bodies, from_dlq=from_dlq, headers=headers, tracer=tracer)


async def test_a_replay_span_skipped_after_an_earlier_failure_is_ended() -> None:
    """Found by review: the span of an entry not published because its entity's previous one failed
    (`unavailable:after_earlier_failure`) was never ended, so never exported."""
    tracer, exporter = in_memory()
    report = await traced_replay(FakeRelay(failing="a1"), {"a1": b"A:0.05", "a2": b"A:0"}, tracer, from_dlq=False)
    assert report.problems == ["a1: unavailable:kafka_timeout", "a2: unavailable:after_earlier_failure"]
    outcomes = sorted(str((s.attributes or {}).get("mytpe.outcome")) for s in exporter.get_finished_spans())
    assert len(outcomes) == 2, outcomes
    assert "unavailable:after_earlier_failure" in outcomes


async def test_a_replay_from_a_file_links_to_no_context_of_the_captured_request() -> None:
    """The relay never reads a `traceparent` from a webhook request, captured or not (found by review: a file
    replay linked to it); a DLQ replay links to the record's creation context."""
    tracer, exporter = in_memory()
    await traced_replay(FakeRelay(), {"f:1": b"A:0"}, tracer, from_dlq=False)
    (from_file,) = exporter.get_finished_spans()
    assert list(from_file.links) == []
    exporter.clear()
    await traced_replay(FakeRelay(), {"dlq[0]@0": b"A:0"}, tracer, from_dlq=True)
    (from_dlq,) = exporter.get_finished_spans()
    assert [f"{link.context.span_id:016x}" for link in from_dlq.links] == [ORIGINAL.split("-")[2]]


async def test_a_replay_from_a_file_is_its_records_creation_context(settings_factory: Callable[..., Settings]) -> None:
    """docs/records.md: a record replayed from a file was first made under the replay's span, so that span is
    its CloudEvent's `traceparent` and its header; an unusable body's DLQ record names it as
    `mytpe-relay-created-traceparent`."""
    tracer, _ = in_memory()
    publisher = FakePublisher()
    parts = compose(
        settings_factory(),
        publisher=publisher,
        dedupe=MemoryDedupeStore(ttl=3600, max_entries=1000),
        metrics=Metrics(),
        tracer=tracer,
    )
    usable = b'{"delivery_id":"f-1","event":"transaction.completed","data":{"transaction":{"id":"t-1"}}}'
    unusable = b'{"delivery_id":"f-2","event":"transaction.completed"}'  # no data: missing_data
    contexts = []
    for delivery_id, body in (("f-1", usable), ("f-2", unusable)):
        headers = {k.lower(): v for k, v in signed_headers(body, timestamp=NOW, delivery_id=delivery_id).items()}
        entry = Captured(f"file:{delivery_id}", headers, body, None)
        with tracer.root("replay") as span:
            step = _prepare(parts.relay, parts.sources.current, entry, from_dlq=False, dry_run=False, now=float(NOW))
            assert not isinstance(step, str), step
            await step[1]()
        context = span.get_span_context()
        contexts.append(f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}")
    family, dlq = publisher.sent
    assert orjson.loads(family.value)["traceparent"] == dict(family.headers)["traceparent"].decode() == contexts[0]
    assert dict(dlq.headers)[CREATED_HEADER].decode() == dict(dlq.headers)["traceparent"].decode() == contexts[1]
