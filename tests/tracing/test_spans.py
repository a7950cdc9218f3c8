"""The spans of one webhook, in process (fake publisher, the SDK's in-memory exporter): the tree, the
attributes, the context written on the record and the CloudEvent, and no secret anywhere."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.logs import JsonFormatter
from relay.settings import Settings
from relay.tracing import TracingConfig, valid_traceparent
from relay.tracing.current import CURRENT
from relay.tracing.otel import TraceIds, Tracer, link
from relay.types import Ack
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import SECRET, sample, signed_headers
from tests.servers import LocalRedis

NOW = 1775745000
URL = "/webhooks/mytpe"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Traced:
    def __init__(
        self, client: TestClient, publisher: FakePublisher, spans: InMemorySpanExporter, tracer: Tracer | None = None
    ) -> None:
        self.client = client
        self.tracer = tracer
        self.publisher = publisher
        self.exporter = spans

    def send(self, event: str = "transaction.completed", *, secret: str = SECRET, **kwargs: Any) -> tuple[bytes, Any]:
        body, delivery_id = sample(event, delivery_id=kwargs.pop("delivery_id", None))
        headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id, secret=secret, **kwargs)
        return body, self.client.post(URL, content=body, headers=headers)

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}


@pytest.fixture
def make(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Traced]]:
    clients: list[TestClient] = []

    def build(
        *, traced: bool = True, ratio: float = 1.0, publisher: FakePublisher | None = None, **overrides: Any
    ) -> Traced:
        exporter = InMemorySpanExporter()
        config = TracingConfig(ratio=ratio)
        tracer = Tracer.build(config, SimpleSpanProcessor(exporter)) if traced else None
        publisher = publisher or FakePublisher()
        app = create_app(settings_factory(**overrides), publisher=publisher, clock=lambda: float(NOW), tracer=tracer)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Traced(client, publisher, exporter, tracer)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def _hex(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_one_server_span_with_verify_dedupe_and_send_children(make: Callable[..., Traced]) -> None:
    traced = make()
    _, response = traced.send(delivery_id="d-trace-1")
    assert response.status_code == 200
    spans = traced.spans()
    assert set(spans) == {"POST /webhooks/mytpe", "verify", "dedupe claim", "dedupe commit", f"send {_topic(traced)}"}
    server = spans["POST /webhooks/mytpe"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    for name, span in spans.items():
        if span is not server:
            assert span.parent is not None and span.parent.span_id == server.context.span_id, name
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == URL
    assert attributes["url.path"] == URL
    assert attributes["http.response.status_code"] == 200
    assert attributes["mytpe.outcome"] == "accepted"
    assert attributes["mytpe.delivery_id"] == "d-trace-1"
    assert attributes["cloudevents.event_id"] == "d-trace-1"
    assert attributes["cloudevents.event_type"] == "app.mytpe.pay.transaction.completed"
    assert str(attributes["cloudevents.event_source"]).startswith("mytpe-pay")
    send = spans[f"send {_topic(traced)}"]
    assert send.kind is SpanKind.PRODUCER
    assert (
        dict(send.attributes or {}).items()
        >= {
            "messaging.system": "kafka",
            "messaging.destination.name": _topic(traced),
            "messaging.operation.type": "send",
            "messaging.kafka.destination.partition": 0,
            "mytpe.delivery_id": "d-trace-1",
        }.items()
    )
    assert dict(spans["dedupe claim"].attributes or {})["mytpe.claim"] == "new"


def _span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def _topic(traced: Traced) -> str:
    return traced.publisher.sent[0].topic


def test_the_record_and_its_cloudevent_carry_the_request_context(make: Callable[..., Traced]) -> None:
    traced = make()
    traced.send()
    trace_id, span_id = _hex(traced.spans()["POST /webhooks/mytpe"])
    (record,) = traced.publisher.sent
    header = dict(record.headers)["traceparent"].decode()
    assert header.startswith(f"00-{trace_id}-{span_id}-")
    assert "tracestate" not in dict(record.headers)  # empty: not written
    assert orjson.loads(record.value)["traceparent"] == header


def test_an_unsampled_request_starts_no_span_and_its_record_carries_its_context_unsampled(
    make: Callable[..., Traced], tmp_path: Path
) -> None:
    """At a ratio of 0 no span is recorded, and none is even started: the relay draws the request's ids and
    decides itself (at 66f8d5a tracing added 107,000 instructions to an unsampled webhook's 456,000, most
    of them the SDK's span; docs/performance.md, "Where it went, counted"). The record and its CloudEvent
    still carry the request's context with its sampled flag clear, so a consumer's parent-based sampling
    drops its spans too."""
    traced = make(ratio=0.0, spool_dir=tmp_path)
    started: list[str] = []
    assert traced.tracer is not None
    sdk = traced.tracer._tracer  # the SDK's tracer under the relay's
    original = sdk.start_span

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return original(name, *args, **kwargs)

    sdk.start_span = counting  # type: ignore[method-assign]
    _, response = traced.send()
    assert response.status_code == 200, response.text
    assert started == [], started
    assert traced.exporter.get_finished_spans() == ()
    (record,) = traced.publisher.sent
    header = dict(record.headers)["traceparent"].decode()
    assert valid_traceparent(header) == header and not int(header[-2:], 16) & 1, header  # sampled flag clear
    assert orjson.loads(record.value)["traceparent"] == header


def test_a_duplicate_is_an_outcome_on_its_span_and_publishes_nothing(make: Callable[..., Traced]) -> None:
    traced = make()
    traced.send(delivery_id="d-dup")
    traced.exporter.clear()
    traced.send(delivery_id="d-dup")
    spans = traced.spans()
    assert dict(spans["POST /webhooks/mytpe"].attributes or {})["mytpe.outcome"] == "duplicate"
    assert dict(spans["dedupe claim"].attributes or {})["mytpe.claim"] == "duplicate"
    assert not any(name.startswith("send ") for name in spans)


def test_a_refusal_names_its_reason_and_the_dlq_record_carries_the_context(make: Callable[..., Traced]) -> None:
    traced = make()
    _, response = traced.send(secret="whsec_not_the_right_one_0000000000000000000000")
    assert response.status_code == 401
    spans = traced.spans()
    server = spans["POST /webhooks/mytpe"]
    assert dict(server.attributes or {})["mytpe.outcome"] == "bad_signature"
    assert dict(server.attributes or {})["http.response.status_code"] == 401
    assert spans["verify"].status.status_code is StatusCode.ERROR
    assert dict(spans["verify"].attributes or {})["error.type"] == "bad_signature"
    assert spans["verify"].status.description is None  # never an exception's message
    assert not spans["verify"].events
    traced.exporter.clear()
    body = b'{"event":"refund.created","data":{"refund":{"id":"r"}}}'
    traced.client.post(URL, content=body, headers=signed_headers(body, timestamp=NOW, delivery_id="q-t"))
    (dlq,) = traced.publisher.sent
    trace_id, span_id = _hex(traced.spans()["POST /webhooks/mytpe"])
    assert dict(dlq.headers)["traceparent"].startswith(f"00-{trace_id}-{span_id}-".encode())
    assert dict(traced.spans()["POST /webhooks/mytpe"].attributes or {})["mytpe.outcome"] == "quarantined"


def test_a_spooled_delivery_has_a_spool_write_span_under_its_send(make: Callable[..., Traced], tmp_path: Path) -> None:
    traced = make(publisher=FakePublisher(fail_with=kafka_down()), spool_dir=tmp_path, spool_drain_seconds=0.5)
    _, response = traced.send()
    assert response.json()["spooled"] is True
    spans = {span.name: span for span in traced.exporter.get_finished_spans()}
    (send,) = [span for name, span in spans.items() if name.startswith("send ")]
    write = spans["spool write"]
    assert write.parent is not None and write.parent.span_id == send.context.span_id
    assert dict(send.attributes or {})["mytpe.spooled"] is True
    assert write.status.is_ok


def test_a_send_span_ends_at_a_late_acknowledgement_not_at_the_503(make: Callable[..., Traced]) -> None:
    publisher = FakePublisher(leave_pending=True)
    traced = make(publisher=publisher)
    _, response = traced.send(delivery_id="d-late")
    assert response.status_code == 503
    assert "POST /webhooks/mytpe" in traced.spans()
    assert not [name for name in traced.spans() if name.startswith("send ")], "the record may still land"
    (pending,) = publisher.pending
    pending.get_loop().call_soon_threadsafe(pending.set_result, Ack("t.transaction", 3, 41))
    for _ in range(500):  # bounded: 5 s
        sends = [span for name, span in traced.spans().items() if name.startswith("send ")]
        if sends:
            break
        time.sleep(0.01)
    (send,) = sends
    assert dict(send.attributes or {})["messaging.kafka.destination.partition"] == 3
    assert dict(send.attributes or {})["messaging.kafka.offset"] == 41
    assert send.status.is_ok
    for _ in range(500):  # bounded: 5 s; the commit follows the acknowledgement
        if "dedupe commit" in traced.spans():
            break
        time.sleep(0.01)
    commit = traced.spans()["dedupe commit"]  # under the request, which ended with its 503
    assert commit.parent is not None and commit.parent.span_id == _span_id(traced.spans()["POST /webhooks/mytpe"])


def test_a_shared_stores_commit_after_the_answer_is_still_the_requests_child(
    make: Callable[..., Traced], redis: LocalRedis
) -> None:
    """With Redis the commit is sent after the answer (docs/dedupe.md): its span still joins the request."""
    traced = make(dedupe_url=redis.url)
    _, response = traced.send(delivery_id="d-trace-shared")
    assert response.status_code == 200
    for _ in range(500):  # bounded: 5 s
        if "dedupe commit" in traced.spans():
            break
        time.sleep(0.01)
    spans = traced.spans()
    commit, server = spans["dedupe commit"], spans["POST /webhooks/mytpe"]
    assert commit.parent is not None and commit.parent.span_id == _span_id(server)
    assert _hex(commit)[0] == _hex(server)[0]


def test_no_secret_signature_or_payload_in_any_span(make: Callable[..., Traced]) -> None:
    traced = make()
    body, response = traced.send(delivery_id="d-secret")
    traced.send(secret="whsec_wrong_secret_value_1111111111111111111111")
    body2 = b'{"event":"refund.created","data":{"refund":{"id":"payload-marker-42"}}}'
    traced.client.post(URL, content=body2, headers=signed_headers(body2, timestamp=NOW))
    assert response.status_code == 200
    signature = signed_headers(body, timestamp=NOW)["X-MytpePay-Signature"].removeprefix("sha256=")
    data = json.loads(body)["data"]
    forbidden = [SECRET, "whsec_", signature, "payload-marker-42", json.dumps(data)[:40], body[:40].decode()]
    seen = []
    for span in traced.exporter.get_finished_spans():
        seen.append(span.name)
        for key, value in (span.attributes or {}).items():
            seen.append(f"{key}={value!r}")
        seen.extend(str(event.attributes) for event in span.events)
        seen.append(str(span.status.description))
    text = "\n".join(seen)
    for value in forbidden:
        assert value not in text, value
    assert "sha256" not in text


def test_tracing_off_writes_no_traceparent_anywhere(make: Callable[..., Traced]) -> None:
    traced = make(traced=False)
    traced.send()
    (record,) = traced.publisher.sent
    assert all(name not in ("traceparent", "tracestate") for name, _ in record.headers)
    assert "traceparent" not in orjson.loads(record.value)
    assert traced.exporter.get_finished_spans() == ()


def test_latency_exemplars_only_in_openmetrics(make: Callable[..., Traced]) -> None:
    traced = make()
    traced.send()
    trace_id, _ = _hex(traced.spans()["POST /webhooks/mytpe"])
    classic = traced.client.get("/metrics")
    assert classic.headers["content-type"].startswith("text/plain")
    assert trace_id not in classic.text
    open_metrics = traced.client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [line for line in open_metrics.text.splitlines() if "# {" in line]
    names = {line.split("{")[0] for line in exemplars}
    assert {"mytpe_relay_request_duration_seconds_bucket", "mytpe_relay_publish_duration_seconds_bucket"} <= names
    assert all(f'trace_id="{trace_id}"' in line for line in exemplars)


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_request_log_lines_carry_the_trace_and_span_ids(make: Callable[..., Traced], ratio: float) -> None:
    """Sampled, the request span's ids; not sampled, those of the context the relay made (its record's)."""
    traced = make(ratio=ratio)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceIds())
    requests = logging.getLogger("relay.requests")
    requests.addHandler(handler)
    level = requests.level
    requests.setLevel(logging.DEBUG)
    try:
        traced.send()
    finally:
        requests.removeHandler(handler)
        requests.setLevel(level)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    (record,) = traced.publisher.sent
    _, trace_id, span_id, flags = dict(record.headers)["traceparent"].decode().split("-")
    assert flags == ("03" if ratio else "02")  # sampled or not; the trace id random (W3C Level 2), either way
    if ratio:
        assert (trace_id, span_id) == _hex(traced.spans()["POST /webhooks/mytpe"])
    assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)
    assert line["outcome"] == "accepted"


def test_watch_logs_puts_the_filter_on_every_handler_of_the_config() -> None:
    from relay.logs import build_log_config

    config = build_log_config("INFO", "json")
    Tracer.build(TracingConfig()).watch_logs(config)
    assert all("trace_ids" in handler["filters"] for handler in config["handlers"].values())
    logging.config.dictConfig({**config, "loggers": {}})  # valid as uvicorn will apply it


def test_valid_traceparent_refuses_all_zero_ids() -> None:
    assert valid_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
    assert valid_traceparent("00-" + "1" * 32 + "-" + "0" * 16 + "-01") is None
    assert valid_traceparent(b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-00") is not None
    assert valid_traceparent("garbage") is None


def test_the_traceparent_written_follows_the_current_context_whatever_came_before() -> None:
    """The tracer formats a context's `traceparent` once for the two record builders' calls; another
    context, or the first one again after another, gets its own value, never the last one written."""
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(InMemorySpanExporter()))
    written, spans = [], []
    for name in ("first", "second"):
        with tracer.root(name) as span:
            expected = "00-{:032x}-{:016x}-{:02x}".format(*_ids(span))
            written.append((tracer.traceparent(), dict(tracer.headers())["traceparent"].decode(), expected))
            spans.append(span)
    with tracer.use(spans[0]):  # the first again, after the second was formatted
        written.append((tracer.traceparent(), dict(tracer.headers())["traceparent"].decode(), written[0][2]))
    assert all(value == header == expected for value, header, expected in written), written
    assert written[0][2] != written[1][2]
    assert tracer.traceparent() is None and tracer.headers() == ()  # no current span: nothing


def _ids(span: Any) -> tuple[int, int, int]:
    context = span.get_span_context()
    return context.trace_id, context.span_id, int(context.trace_flags)


def test_the_relays_current_span_is_opentelemetrys_in_every_block() -> None:
    """The request path reads the current span from the relay's own context variable (relay/tracing/current.py,
    `Current`): each `Active` block sets and resets it with OpenTelemetry's context, nested and on an
    error, so both always name the same span."""
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(InMemorySpanExporter()))

    def same() -> bool:
        mine = CURRENT.get()
        return (mine.span if mine is not None else trace.INVALID_SPAN) is trace.get_current_span()

    seen = [same()]
    with tracer.root("outer") as outer:
        seen.append(same())
        with pytest.raises(KeyError), tracer.child("inner"):
            seen.append(same())
            raise KeyError
        seen.append(same() and trace.get_current_span() is outer)
        with tracer.use(outer):
            seen.append(same())
    seen.append(same())
    assert seen == [True] * 6


def test_no_module_but_the_tracer_makes_a_span_current() -> None:
    """What keeps the invariant above: only `Active` (relay/tracing/current.py) attaches a context."""
    attaching = ("attach(", "use_span(", "set_span_in_context(", "start_as_current_span(", "trace.use(")
    relay = Path(__file__).resolve().parents[2] / "relay"
    offenders = [
        str(path.relative_to(relay))
        for path in relay.rglob("*.py")
        # the consumer kit builds a parent context for the consumer's own tracer, never the relay's
        if path.name != "current.py"
        and path.parent.name != "consumer"
        and any(call in path.read_text(encoding="utf-8") for call in attaching)
    ]
    assert offenders == []


def test_a_block_exited_in_another_context_still_ends_its_span_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Misuse no call site makes, kept harmless: OpenTelemetry's detach only logs it, and so does the
    relay's own context variable (review of the `Current` change)."""
    exporter = InMemorySpanExporter()
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(exporter))
    block = tracer.root("elsewhere")
    contextvars.copy_context().run(block.__enter__)
    with caplog.at_level(logging.ERROR):
        block.__exit__(None, None, None)
    assert [span.name for span in exporter.get_finished_spans()] == ["elsewhere"]
    said = [record for record in caplog.records if "exited in another context" in record.getMessage()]
    assert [record.name for record in said] == ["relay.tracing.otel"]  # once: its two variables, one line
    assert CURRENT.get() is None and not trace.get_current_span().get_span_context().is_valid


def test_a_span_that_cannot_be_read_leaves_nothing_attached() -> None:
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(InMemorySpanExporter()))
    before = dict(otel_context.get_current())
    with pytest.raises(AttributeError), tracer.use(None):  # type: ignore[arg-type]
        pass
    assert CURRENT.get() is None and dict(otel_context.get_current()) == before


def test_sampled_agrees_with_the_current_context_in_every_block() -> None:
    """`Tracer.sampled` reads a context variable of its own (`SAMPLED`, one C call): in each kind of block the
    relay makes (a request sampled or not, a child, `use` of a span, a root the ratio did not sample, an
    unsampled request inside a sampled block, which no call site makes), nested and on an error, it says what
    `CURRENT` says."""
    exporter = InMemorySpanExporter()
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(exporter))
    never = Tracer.build(TracingConfig(ratio=0.0), SimpleSpanProcessor(exporter))

    def agrees(expected: bool) -> bool:
        mine = CURRENT.get()
        return tracer.sampled() is (mine is not None and mine.sampled) is expected

    seen = [agrees(False)]
    with never.request(URL, URL):
        seen.append(agrees(False))
        with never.child("verify"):
            seen.append(agrees(False))
    with tracer.request(URL, URL) as request:
        assert request is not None
        seen.append(agrees(True))
        with never.request(URL, URL):
            seen.append(agrees(False))
        seen.append(agrees(True))
        with pytest.raises(KeyError), tracer.child("inner"):
            seen.append(agrees(True))
            raise KeyError
        with never.root("a root the ratio did not sample") as unsampled:
            seen.append(agrees(False))
            with tracer.use(request):  # a sampled span made current again, under an unsampled one
                seen.append(agrees(True))
            with tracer.use(unsampled):  # already current: nothing attached
                seen.append(agrees(False))
        seen.append(agrees(True))
    seen.append(agrees(False))
    assert seen == [True] * 12


@pytest.mark.parametrize("ratio", [1.0, 0.0])
@pytest.mark.parametrize(
    ("where", "failure"),
    [
        ("sending", OSError("connection reset")),
        ("sending", asyncio.CancelledError()),
        # an error in receive is the 500 path, which answers; cancelled there, it is answered 503 shutting_down
        ("receiving", asyncio.CancelledError()),
    ],
)
async def test_a_request_whose_answer_cannot_be_sent_ends_its_span_failed(
    settings_factory: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    failure: BaseException,
    where: str,
    ratio: float,
) -> None:
    """The request's span is entered and exited by the endpoint itself (no `with`): a request cancelled, or
    whose answer fails, still ends its span once, marked failed (sampled), and leaves no context behind."""
    exporter = InMemorySpanExporter()
    tracer = Tracer.build(TracingConfig(ratio=ratio), SimpleSpanProcessor(exporter))
    app = create_app(settings_factory(), publisher=FakePublisher(), clock=lambda: float(NOW), tracer=tracer)
    path = URL + "/nosuch"  # refused before the pipeline: no lifespan needed
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        if where == "receiving":
            raise failure
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if where == "sending":
            raise failure
        sent.append(message)

    if where == "receiving":  # the path names no source: read only for a known one
        scope["path"] = URL
    with caplog.at_level(logging.WARNING):
        if where == "receiving":  # cut by uvicorn at the stop's bound: answered, and the task ends
            await app(scope, receive, send)
        else:
            with pytest.raises(type(failure)):
                await app(scope, receive, send)
    assert [m.get("status") for m in sent] == ([503, None] if where == "receiving" else [])
    assert "on an ended span" not in caplog.text  # the SDK's word for a span ended twice (else only once)
    assert CURRENT.get() is None and not tracer.sampled() and not trace.get_current_span().get_span_context().is_valid
    if ratio == 0.0:
        assert exporter.get_finished_spans() == ()
        return
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER and span.status.status_code is StatusCode.ERROR
    failed = "unavailable" if where == "receiving" else type(failure).__name__
    assert span.attributes is not None and span.attributes["error.type"] == failed


def test_an_unsampled_request_exited_in_another_context_raises_nothing_and_says_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Misuse no call site makes: an unsampled request entered under a sampled block, in a copy of the
    context, and exited in the original. Its SAMPLED token is of that copy too: it is not reset (which would
    raise from `__exit__`), and the one line said is the relay's."""
    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(InMemorySpanExporter()))
    never = Tracer.build(TracingConfig(ratio=0.0), SimpleSpanProcessor(InMemorySpanExporter()))
    with tracer.request(URL, URL):
        block = never.request(URL, URL)
        contextvars.copy_context().run(block.__enter__)
        with caplog.at_level(logging.ERROR):
            block.__exit__(None, None, None)
        assert tracer.sampled()
    said = [record for record in caplog.records if "exited in another context" in record.getMessage()]
    assert [record.name for record in said] == ["relay.tracing.otel"]


@pytest.mark.parametrize("traced", [False, True], ids=["off", "on"])
def test_the_ready_line_counts_the_exporters_last_spans_in_the_stop_bound(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture, traced: bool
) -> None:
    """With tracing on, a stopping relay gives the exporter up to 5 s more after the app has stopped
    (Tracer.shutdown, in `serve`): the ready line's "SIGTERM to exit within" says so."""
    settings = settings_factory(shutdown_delay_seconds=1.5)  # 22.5 s: rounded up, never down (nor to even)
    tracer = Tracer.build(TracingConfig(ratio=0.0)) if traced else None
    app = create_app(settings, publisher=FakePublisher(), tracer=tracer)
    with caplog.at_level(logging.INFO, logger="relay"), TestClient(app):
        pass
    (line,) = [record.getMessage() for record in caplog.records if record.getMessage().startswith("relay ready")]
    extra = TracingConfig(endpoint="http://x/v1/traces").stop_seconds if traced else 0.0
    assert line.endswith(f"SIGTERM to exit within {math.ceil(settings.stop_bound_seconds + extra)}s")
    assert settings.stop_bound_seconds == 22.5  # "%.0f" would say 22


@pytest.mark.parametrize("state", [b'k=v,x=\n{"level": "error", "msg": "forged"}', "k=v," + "x" * 600, b"\xff=v"])
def test_a_link_drops_a_tracestate_that_could_forge_a_log_line(state: str | bytes, caplog: Any) -> None:
    """Read in a review: a spooled row's or a DLQ record's `tracestate` went whole to OpenTelemetry's parser,
    which logs a member it refuses verbatim. The link keeps its context, without that state, and logs nothing."""
    caplog.set_level(logging.DEBUG)
    found = link("00-" + "1" * 32 + "-" + "2" * 16 + "-01", tracestate=state)
    assert found is not None and found.context.trace_id == int("1" * 32, 16)
    assert len(found.context.trace_state) == 0
    assert caplog.records == []


def test_a_link_keeps_a_printable_tracestate() -> None:
    found = link("00-" + "1" * 32 + "-" + "2" * 16 + "-01", tracestate=b"vendor=abc,\tother=1")  # W3C's OWS: a tab
    assert found is not None and dict(found.context.trace_state) == {"vendor": "abc", "other": "1"}
    longest = ",".join(f"k{n:02}=" + "v" * 16 for n in range(25))[:512].rsplit(",", 1)[0]
    found = link("00-" + "1" * 32 + "-" + "2" * 16 + "-01", tracestate=longest.ljust(512))  # 512 characters: kept
    assert found is not None and len(found.context.trace_state) == longest.count(",") + 1
