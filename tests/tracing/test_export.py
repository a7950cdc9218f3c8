"""Exports never hold a request: spans leave from the batch processor's thread, over real OTLP/HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.tracing import TracingConfig
from relay.tracing.otel import BATCH_LOGGER, QuietDrops, Tracer, quiet_drops
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers
from tests.otlp_receiver import otlp_receiver

NOW = 1775745000


def test_a_collector_that_does_not_answer_holds_no_request(settings_factory: Callable[..., Settings]) -> None:
    with otlp_receiver() as receiver:
        receiver.hold.clear()  # every export waits until the test releases it
        exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=30)
        tracer = Tracer.build(TracingConfig(), BatchSpanProcessor(exporter, schedule_delay_millis=10))
        publisher = FakePublisher()
        app = create_app(settings_factory(), publisher=publisher, clock=lambda: float(NOW), tracer=tracer)
        with TestClient(app) as client:

            def send() -> int:
                body, delivery_id = sample()
                headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
                return client.post("/webhooks/mytpe", content=body, headers=headers).status_code

            assert send() == 200
            assert receiver.holding.wait(30), "the first export reached the collector"
            answers = [send() for _ in range(20)]  # while that export hangs
        assert answers == [200] * 20
        assert len(publisher.sent) == 21
        receiver.hold.set()
        tracer.shutdown()
        received = receiver.wait_for(lambda spans: len({s.trace_id for s in spans}) == 21)
        assert {s.name for s in received} >= {"POST /webhooks/mytpe", "verify"}


def test_a_collector_that_does_not_answer_holds_the_stop_no_longer_than_its_bound() -> None:
    """docs/guarantees.md §7, step 4: `Tracer.shutdown` gives the exporter its bound (SHUTDOWN_SECONDS in
    `serve`; here 0.2 s) and returns while an export is still held, its thread left to end on its own."""
    with otlp_receiver() as receiver:
        receiver.hold.clear()  # every export waits until the test releases it
        exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=30)
        tracer = Tracer.build(TracingConfig(), BatchSpanProcessor(exporter, schedule_delay_millis=10))
        with tracer.root("held"):
            pass
        assert receiver.holding.wait(30), "the export reached the collector"
        tracer.shutdown(timeout=0.2)  # unbounded, this would wait for the release below: never
        (closing,) = [thread for thread in threading.enumerate() if thread.name == "otel-shutdown"]
        assert closing.is_alive() and closing.daemon and not receiver.hold.is_set()
        receiver.hold.set()
        closing.join(30)
        assert not closing.is_alive()


def test_a_full_queue_logs_one_line_a_minute_not_one_per_dropped_span() -> None:
    now = [0.0]
    quiet = QuietDrops(interval=60.0, clock=lambda: now[0])
    kept = []
    for second in range(0, 150, 1):
        now[0] = float(second)
        for _ in range(10):  # ten spans dropped each second
            record = logging.LogRecord(
                BATCH_LOGGER, logging.WARNING, "", 0, "Queue full, dropping %s.", ("span",), None
            )
            if quiet.filter(record):
                kept.append((second, record.getMessage()))
    assert [second for second, _ in kept] == [0, 60, 120]
    assert kept[0][1] == "Queue full, dropping span."
    assert kept[1][1].endswith("(599 more such line(s) held back since the last)")
    other = logging.LogRecord(BATCH_LOGGER, logging.WARNING, "", 0, "Exporter already shutdown", (), None)
    assert quiet.filter(other)


def test_the_filter_sits_on_the_logger_the_sdk_drops_spans_on() -> None:
    from opentelemetry.sdk import _shared_internal

    assert _shared_internal._logger.name == BATCH_LOGGER
    quiet_drops()
    quiet_drops()
    assert sum(isinstance(f, QuietDrops) for f in logging.getLogger(BATCH_LOGGER).filters) == 1
