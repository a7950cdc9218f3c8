"""What one span costs in the OpenTelemetry SDK, in CPU µs, apart from the relay: to say where a traced
webhook's time goes. Bounded: a few thousand spans, in this process, with nothing exported over a network.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

SPANS = 5_000
ATTRIBUTES = {
    "http.request.method": "POST",
    "url.path": "/webhooks/mytpe",
    "messaging.system": "kafka",
    "messaging.destination.name": "mytpe.transaction",
    "messaging.message.id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "cloudevents.event_type": "app.mytpe.pay.transaction.completed",
}


def sdk_costs(spans: int = SPANS) -> dict[str, Any]:
    """CPU µs per span: started with six attributes and ended (sampled, handed to a processor that keeps it),
    then encoded as OTLP protobuf. None when the SDK is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: PLC0415
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: PLC0415
    except ImportError:
        return {"start_end_us": None, "encode_us": None}
    kept: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("bench")
    started = time.process_time()
    for _ in range(spans):
        tracer.start_span("POST /webhooks/mytpe", attributes=ATTRIBUTES).end()
    start_end = (time.process_time() - started) / spans * 1e6
    started = time.process_time()
    for offset in range(0, spans, 512):  # the BatchSpanProcessor's default batch
        _encode(encode_spans, kept[offset : offset + 512])
    encode = (time.process_time() - started) / spans * 1e6
    provider.shutdown()
    return {"start_end_us": start_end, "encode_us": encode}


def _encode(encode_spans: Any, batch: Sequence[Any]) -> int:
    return len(encode_spans(batch).SerializePartialToString())
