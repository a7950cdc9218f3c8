"""A local OTLP/HTTP trace sink for the benchmark: answers 200 to `POST /v1/traces` and counts what came.

It stands in for a collector on 127.0.0.1, so the relay's exporter does all its work (encode, POST) and
nothing leaves the machine. Spans are counted by decoding each request when `opentelemetry-proto` is
installed (the otel extra brings it); bytes are counted as received, compressed or not.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v1/traces"


@dataclass
class Counts:
    requests: int = 0
    received_bytes: int = 0
    spans: int | None = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, body: bytes, spans: int | None) -> None:
        with self.lock:
            self.requests += 1
            self.received_bytes += len(body)
            self.spans = None if spans is None or self.spans is None else self.spans + spans


def count_spans(body: bytes, encoding: str) -> int | None:
    """The spans of one ExportTraceServiceRequest, or None when opentelemetry-proto is not installed."""
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: PLC0415
            ExportTraceServiceRequest,
        )
    except ImportError:
        return None
    request = ExportTraceServiceRequest()
    request.ParseFromString(gzip.decompress(body) if encoding == "gzip" else body)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


class _Handler(BaseHTTPRequestHandler):
    counts: Counts

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != PATH:
            self.send_response(404)
            self.end_headers()
            return
        self.counts.add(body, count_spans(body, self.headers.get("Content-Encoding", "")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


class OtlpSink:
    """`with OtlpSink() as sink:` serves on 127.0.0.1 in a thread; `sink.endpoint` is the OTLP base URL."""

    def __init__(self) -> None:
        self.counts = Counts()
        handler = type("Handler", (_Handler,), {"counts": self.counts})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
