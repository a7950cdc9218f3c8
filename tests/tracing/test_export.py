"""Exports never hold a request: spans leave from the batch processor's thread, over real OTLP/HTTP."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer
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
