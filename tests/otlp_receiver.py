"""A small OTLP/HTTP traces receiver on 127.0.0.1 for tests: it decodes `POST /v1/traces` with
opentelemetry-proto and keeps the spans, so a test can wait for the ones it expects."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

SERVER, PRODUCER, CONSUMER = 2, 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "int_value", "bool_value", "double_value") else str(value)


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=service,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    )
                )
    return spans


class Receiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        """Each export's request body, as it came (decompressed)."""
        self.requests = 0
        self.hold = threading.Event()
        """Cleared: each export waits (a collector that does not answer) until it is set again."""
        self.hold.set()
        self.holding = threading.Event()
        """Set once an export is waiting on `hold`."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if not receiver.hold.is_set():
                    receiver.holding.set()
                    receiver.hold.wait(60)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                spans = decode(body)
                with receiver._lock:
                    receiver.requests += 1
                    receiver.bodies.append(body)
                    receiver.spans.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Every span received so far, once `found(spans)` is true; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans not received within {timeout}s: {[s.name for s in spans]}")
            time.sleep(0.05)

    def trace(self, trace_id: str, names: set[str], *, timeout: float = 30.0) -> dict[str, ReceivedSpan]:
        """The spans of `trace_id` by name, once every one of `names` arrived."""
        spans = self.wait_for(lambda got: names <= {s.name for s in got if s.trace_id == trace_id}, timeout=timeout)
        return {s.name: s for s in spans if s.trace_id == trace_id}


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver._thread.start()
    try:
        yield receiver
    finally:
        receiver.hold.set()
        receiver._server.shutdown()
        receiver._server.server_close()
        receiver._thread.join(timeout=5)
