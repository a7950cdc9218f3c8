"""Spans of the work done outside a request: a parked delivery re-verified, a spool drain."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay.dedupe.memory import MemoryDedupeStore
from relay.metrics import Metrics
from relay.pipeline.compose import compose
from relay.sources.parking import Limits, MemoryParkingLot
from relay.sources.registry import SourceRegistry
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.tracing import TracingConfig, valid_traceparent
from relay.tracing.otel import Tracer
from tests.conftest import make_settings
from tests.fakes import FakePublisher
from tests.test_attendant import NEW, parked

ORIGINAL = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def in_memory(ratio: float = 1.0) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer.build(TracingConfig(ratio=ratio), SimpleSpanProcessor(exporter)), exporter


async def _reverify_one(tmp_path: Path, ratio: float) -> tuple[str, FakePublisher, InMemorySpanExporter]:
    """Park one delivery signed with a secret its source gains, then re-verify it: (its delivery id, the
    publisher it went to, the spans)."""
    lot = MemoryParkingLot(Limits())
    entry = parked(NEW, at=time.time() - 5)
    await lot.park(entry)
    publisher, metrics = FakePublisher(), Metrics()
    tracer, exporter = in_memory(ratio)
    file = tmp_path / "sources.yaml"
    file.write_text(f"sources:\n  - {{name: shop, secrets: [{NEW}]}}\n")
    pipeline = compose(
        make_settings(secrets=(), sources_file=file),
        publisher=publisher,
        dedupe=MemoryDedupeStore(ttl=60, max_entries=100),
        metrics=metrics,
        sources=SourceRegistry(default=None, file=file, metrics=metrics),
        parking=lot,
        tracer=tracer,
    )
    source = pipeline.sources.current.by_name("shop")
    assert source is not None
    assert await pipeline.attendant.reverify(source) == (1, {})
    return entry.delivery_id, publisher, exporter


async def test_a_reverified_parked_delivery_is_a_trace_of_its_own(tmp_path: Path) -> None:
    delivery_id, publisher, exporter = await _reverify_one(tmp_path, 1.0)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = spans["reverify parked delivery"]
    assert root.parent is None
    assert dict(root.attributes or {})["mytpe.delivery_id"] == delivery_id
    assert dict(root.attributes or {})["mytpe.outcome"] == "accepted"
    assert {"dedupe claim", "dedupe commit"} <= set(spans)
    assert all(s.context.trace_id == root.context.trace_id for s in spans.values())
    (record,) = publisher.sent
    created = orjson.loads(record.value)["traceparent"]
    assert created == dict(record.headers)["traceparent"].decode()
    assert created.split("-")[1:3] == [format(root.context.trace_id, "032x"), format(root.context.span_id, "016x")]


async def test_a_reverified_delivery_the_ratio_does_not_sample_records_no_span_and_carries_its_context(
    tmp_path: Path,
) -> None:
    """Review: the background paths had no test at a ratio of 0. A re-verification's root is the SDK's (its
    sampler decides); not sampled, the pipeline under it starts no child, and the record still carries that
    root's context, the sampled flag clear."""
    _, publisher, exporter = await _reverify_one(tmp_path, 0.0)
    assert exporter.get_finished_spans() == ()
    (record,) = publisher.sent
    header = dict(record.headers)["traceparent"].decode()
    assert valid_traceparent(header) == header and not int(header[-2:], 16) & 1
    assert orjson.loads(record.value)["traceparent"] == header


async def test_a_drained_record_keeps_its_cloudevent_and_gets_this_hops_header(tmp_path: Path) -> None:
    value = orjson.dumps({"specversion": "1.0", "id": "s-1", "traceparent": ORIGINAL, "data": {}})
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    try:
        headers = [("content-type", b"json"), ("traceparent", ORIGINAL.encode()), ("tracestate", b"k=v")]
        await spool.put(Pending("mytpe.transaction", b"k", value, headers))
        publisher = FakePublisher()
        drainer = Drainer(spool, publisher, Metrics())
        drainer.tracer, exporter = in_memory()
        assert await drainer.drain(timeout=10) == 0
    finally:
        await spool.close()
    (record,) = publisher.sent
    assert record.value == value
    (span,) = exporter.get_finished_spans()
    sent = dict(record.headers)
    assert sent["traceparent"].decode().split("-")[1:3] == [
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
    ]
    assert "tracestate" not in sent, "the original's tracestate is not this hop's"
    assert [h for h, _ in record.headers].count("traceparent") == 1
    (link,) = span.links
    assert format(link.context.trace_id, "032x") == ORIGINAL.split("-")[1]
    assert dict(span.attributes or {})["mytpe.outcome"] == "acked"


async def test_the_spool_writer_started_by_a_request_does_not_run_in_its_trace(tmp_path: Path) -> None:
    """Found by review: a long-lived background task created inside a request (the spool's writer, the
    producer's batch pass, the Redis batch sender, the producer swap) inherited the request's span, so its
    log lines carried that request's trace_id while serving many. They start in an empty context now."""
    from opentelemetry import trace

    from relay.spool.spool import Spool

    tracer, _ = in_memory()
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    seen: list[bool] = []
    write = spool._write

    async def watched() -> None:
        seen.append(trace.get_current_span().get_span_context().is_valid)
        await write()

    spool._write = watched  # type: ignore[method-assign]
    with tracer.root("POST /webhooks/mytpe"):
        await spool.put(Pending("mytpe.transaction", b"k", b"v", [("content-type", b"json")]))
    await spool.close()
    assert seen == [False]
