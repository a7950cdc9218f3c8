"""What one span costs in the OpenTelemetry SDK, in CPU µs, apart from the relay: to say where a traced
webhook's time goes. Bounded: a few thousand spans, in this process, with nothing exported over a network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

SPANS = 5_000
TREE = 5  # a sampled webhook's spans: request, verify, dedupe claim, send, dedupe commit (tests/tracing)
KEYS = ("start_end_us", "encode_us", "sdk_encode_us", "unsampled_tree_us", "relay_tree_us", "sdk_tree_us")
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
    then encoded as OTLP protobuf by the relay's exporter (`encode_us`: relay/tracing/otlp.py, since
    2026-12-04) and by the SDK's own encoder (`sdk_encode_us`, the one the relay used before); per tree of
    five spans that the ratio did not sample (the relay starts none of them for a webhook it does not
    sample: it draws the ids and decides itself); and per sampled tree of five (a request, three children and
    a send span, alike on both sides: `_sampled_trees`), made by the relay's tracer (`relay_tree_us`: its
    own spans, relay/tracing/light.py) and by the SDK's (`sdk_tree_us`, as the relay made them before), each
    into a processor that drops them. None when the SDK is not installed. Each is measured after a warm-up
    pass."""
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: PLC0415
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

        from relay.tracing.otlp import encode  # noqa: PLC0415
    except ImportError:
        return dict.fromkeys(KEYS)
    kept: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("bench")
    start_end = _per_call(lambda: tracer.start_span("POST /webhooks/mytpe", attributes=ATTRIBUTES).end(), spans)
    batches = [kept[offset : offset + 512] for offset in range(0, len(kept), 512)]  # the batch processor's size
    relay_encode = _per_call(lambda: len(encode(batches[0])), 10) / len(batches[0])
    sdk_encode = _per_call(lambda: _encode(encode_spans, batches[0]), 10) / len(batches[0])
    provider.shutdown()
    unsampled = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    tree = _per_call(lambda: _tree(unsampled.get_tracer("bench")), spans // TREE)
    unsampled.shutdown()
    relay_tree, sdk_tree = _sampled_trees(spans // TREE)
    return {
        "start_end_us": start_end,
        "encode_us": relay_encode,
        "sdk_encode_us": sdk_encode,
        "unsampled_tree_us": tree,
        "relay_tree_us": relay_tree,
        "sdk_tree_us": sdk_tree,
    }


def _sampled_trees(trees: int) -> tuple[float, float]:
    """CPU µs per sampled tree of five spans, alike on both sides: the request span (SERVER, the relay's three
    attributes), three children (one attribute each) and a send span (PRODUCER, five attributes), each current
    in OpenTelemetry's context while it runs, all into a processor that drops them; made by the relay's
    tracer, and by the SDK's (as the relay made them before 2d50049). Alternated twice; the lower of each."""
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.context import Context  # noqa: PLC0415
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor  # noqa: PLC0415
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    from relay.tracing import TracingConfig  # noqa: PLC0415
    from relay.tracing.otel import Tracer  # noqa: PLC0415

    class Drop(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            pass

    relay = Tracer.build(TracingConfig(ratio=1.0), Drop())
    sdk = relay.provider.get_tracer("bench")
    route = "/webhooks/mytpe"
    request = {"http.request.method": "POST", "http.route": route, "url.path": route}
    child = {"messaging.system": "kafka"}
    send = {
        "messaging.system": "kafka",
        "messaging.destination.name": "mytpe.transaction",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "mytpe.delivery_id": "f47ac10b",
    }

    def relay_tree() -> None:
        with relay.request(route, route):
            for name in ("verify", "dedupe claim", "dedupe commit"):
                with relay.child(name, child):
                    pass
            made = relay.send("mytpe.transaction", "f47ac10b")
            assert made is not None  # noqa: S101 - sampled
            with relay.use(made):
                pass
            made.end()

    def sdk_tree() -> None:
        with sdk.start_as_current_span(f"POST {route}", Context(), SpanKind.SERVER, request):
            for name in ("verify", "dedupe claim", "dedupe commit"):
                with sdk.start_as_current_span(name, attributes=child):
                    pass
            made = sdk.start_span("send mytpe.transaction", None, SpanKind.PRODUCER, send)
            with trace.use_span(made):
                pass
            made.end()

    timed = [(_per_call(relay_tree, trees), _per_call(sdk_tree, trees)) for _ in range(2)]
    relay.shutdown()
    return min(pair[0] for pair in timed), min(pair[1] for pair in timed)


def _per_call(call: Callable[[], object], count: int) -> float:
    for _ in range(max(count // 10, 1)):
        call()
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count * 1e6


def _tree(tracer: Any) -> None:
    from opentelemetry import trace  # noqa: PLC0415

    root = tracer.start_span("POST /webhooks/mytpe", attributes=ATTRIBUTES)
    within = trace.set_span_in_context(root)
    for name in ("verify", "dedupe claim", "send", "dedupe commit"):
        tracer.start_span(name, within, attributes={"messaging.system": "kafka"}).end()
    root.end()


def _encode(encode_spans: Any, batch: Sequence[Any]) -> int:
    return len(encode_spans(batch).SerializePartialToString())
