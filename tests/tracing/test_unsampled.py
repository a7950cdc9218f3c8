"""A webhook request the ratio does not sample gets a context of the relay's own making (relay/tracing/otel.py
`Tracer.request`, relay/tracing/current.py `Unsampled`): the relay draws its ids and applies the sampler's
rule itself, so that the SDK is not called at all. These tests hold what that must keep: the same decision
as the configured sampler, the same ids on the sampled span, the same flags on the wire, and nothing
attached to OpenTelemetry's context."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.tracing import TracingConfig, sampling, valid_traceparent
from relay.tracing.config import SAMPLERS
from relay.tracing.current import CURRENT
from relay.tracing.otel import Tracer
from relay.tracing.sampling import bound_of, sampler_of
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers

LOW = (1 << 64) - 1
RATIOS = [0.0, 1e-9, 0.01, 0.25, 0.5, 1 / 3, 0.999, 1.0]
ROUTE = "/webhooks/mytpe"
NOW = 1775745000


def _edges(bound: int) -> list[int]:
    """Trace ids whose low 64 bits sit on either side of `bound`, and at the ends of the range."""
    lows = {0, 1, LOW, bound - 1, bound, bound + 1}
    return [(high << 64) | low for low in lows if 0 <= low <= LOW for high in (0, 1, (1 << 64) - 1)]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_the_relays_decision_is_the_configured_samplers_at_its_edges(sampler: str, ratio: float) -> None:
    config = TracingConfig(sampler=sampler, ratio=ratio)
    bound, sdk = bound_of(config), sampler_of(config)
    for trace_id in _edges(bound):
        if trace_id == 0:
            continue  # never drawn: an all-zero id is drawn again
        expected = sdk.should_sample(Context(), trace_id, "POST").decision.is_sampled()  # type: ignore[no-untyped-call]
        assert ((trace_id & LOW) < bound) is expected, (sampler, ratio, hex(trace_id))


@given(
    sampler=st.sampled_from(SAMPLERS),
    ratio=st.floats(min_value=0.0, max_value=1.0),
    trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
)
def test_the_relays_decision_is_the_configured_samplers(sampler: str, ratio: float, trace_id: int) -> None:
    config = TracingConfig(sampler=sampler, ratio=ratio)
    expected = sampler_of(config).should_sample(Context(), trace_id, "POST").decision.is_sampled()  # type: ignore[no-untyped-call]
    assert ((trace_id & LOW) < bound_of(config)) is expected


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Script the relay's draws (`sampling.draw`): the values given, in order, then the real generator."""
    script: list[int] = []
    real = sampling.draw

    def draw(bits: int) -> int:
        return script.pop(0) if script else real(bits)

    monkeypatch.setattr(sampling, "draw", draw)
    yield lambda *values: script.extend(values)
    assert script == [], "a scripted draw was not used"


def _tracer(ratio: float) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer.build(TracingConfig(ratio=ratio), SimpleSpanProcessor(exporter)), exporter


def test_a_sampled_request_keeps_the_trace_id_the_relay_drew(drawn: Callable[..., None]) -> None:
    """At 0.5 a trace id whose low 64 bits are 1 is sampled: the request's span must carry that very id (else its
    trace would not be the one the ratio decided on)."""
    tracer, exporter = _tracer(0.5)
    chosen = (0xABC << 64) | 1
    drawn(chosen)
    with tracer.request(ROUTE, ROUTE):
        written, headers = tracer.on_record()
    (span,) = exporter.get_finished_spans()
    assert span.context is not None and span.context.trace_id == chosen
    assert written is not None and written.split("-")[1] == format(chosen, "032x")
    assert written.endswith("-03") and dict(headers)["traceparent"] == written.encode()
    with tracer.root("after") as after:  # the choice served that one span only
        assert after.get_span_context().trace_id != chosen


def test_an_unsampled_request_writes_the_ids_the_relay_drew_and_starts_no_span(drawn: Callable[..., None]) -> None:
    tracer, exporter = _tracer(0.5)
    trace_id, span_id = (0xABC << 64) | LOW, 0x1234
    drawn(trace_id, span_id)
    with tracer.request(ROUTE, ROUTE):
        written, headers = tracer.on_record()
        assert tracer.send("mytpe.transaction", "d-1") is None  # no PRODUCER span either
    assert written == f"00-{trace_id:032x}-{span_id:016x}-02"
    assert headers == (("traceparent", written.encode()),)
    assert exporter.get_finished_spans() == ()


def test_a_draw_of_zero_is_drawn_again(drawn: Callable[..., None]) -> None:
    """An all-zero trace or span id is invalid (W3C): neither is ever written."""
    tracer, _ = _tracer(0.0)
    drawn(0, 7, 0, 9)
    with tracer.request(ROUTE, ROUTE):
        written, _ = tracer.on_record()
    assert written == f"00-{7:032x}-{9:016x}-02"
    assert valid_traceparent(written) == written


def test_a_childs_draw_of_zero_is_drawn_again(drawn: Callable[..., None]) -> None:
    """A sampled child's span id is drawn by the relay too, and never all-zero."""
    tracer, exporter = _tracer(1.0)
    drawn(5, 6, 0, 9)
    with tracer.request(ROUTE, ROUTE), tracer.child("verify"):
        pass
    verify = next(span for span in exporter.get_finished_spans() if span.name == "verify")
    assert verify.context is not None and (verify.context.trace_id, verify.context.span_id) == (5, 9)


def test_the_unsampled_flags_are_the_ones_the_sdk_writes() -> None:
    """The wire keeps its form: the relay-made context's flags are those of the SDK's own unsampled root."""
    tracer, _ = _tracer(0.0)
    sdk_root = tracer.provider.get_tracer("test").start_span("x", Context())
    expected = format(int(sdk_root.get_span_context().trace_flags), "02x")
    with tracer.request(ROUTE, ROUTE):
        written, _ = tracer.on_record()
    assert written is not None and written.endswith(f"-{expected}")


def test_an_unsampled_request_attaches_nothing_to_opentelemetrys_context() -> None:
    """The relay reads its own `CURRENT`; OpenTelemetry's context stays empty, so no SDK span can start under
    the relay-made context (a child block is the shared unsampled one)."""
    tracer, exporter = _tracer(0.0)
    with tracer.request(ROUTE, ROUTE):
        current = CURRENT.get()
        assert current is not None and current.valid and not current.sampled
        assert not trace.get_current_span().get_span_context().is_valid
        assert not tracer.sampled()
        with tracer.child("verify") as span:
            assert not span.get_span_context().is_valid
    assert CURRENT.get() is None
    assert exporter.get_finished_spans() == ()


def test_a_sampled_request_and_its_children_start_no_sdk_span(drawn: Callable[..., None]) -> None:
    """The request path's sampled spans are the relay's (`LightSpan`): the SDK's tracer is not called for the
    request, its children, its send span or a commit started by hand, and the processor still gets each, in
    one trace, parented as the SDK would parent them."""
    tracer, exporter = _tracer(1.0)
    chosen = (0xDEF << 64) | 5
    drawn(chosen, 0x51)

    def refused(*args: object, **kwargs: object) -> trace.Span:
        raise AssertionError("the SDK's tracer was called")

    tracer._tracer.start_span = refused  # type: ignore[method-assign]
    with tracer.request(ROUTE, ROUTE):
        with tracer.child("verify"):
            pass
        send = tracer.send("mytpe.transaction", "d-1")
        assert send is not None
        send.end()
        tracer.start("dedupe commit").end()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {f"POST {ROUTE}", "verify", "send mytpe.transaction", "dedupe commit"}
    request = spans.pop(f"POST {ROUTE}")
    assert request.context is not None and request.parent is None
    assert (request.context.trace_id, request.context.span_id) == (chosen, 0x51)
    for span in spans.values():
        assert span.context is not None and span.context.trace_id == chosen
        assert span.parent == request.context and span.context.span_id != 0x51


@pytest.mark.parametrize(("offset", "sampled"), [(-1, True), (0, False)])
def test_the_request_samples_below_the_bound_and_not_at_it(
    drawn: Callable[..., None], offset: int, sampled: bool
) -> None:
    """Found by review: the decision in `Tracer.request` itself was not tested at the bound (a `>` for its
    `>=` passed every test). At 0.5, low 64 bits of bound - 1 are sampled, and exactly the bound is not."""
    tracer, exporter = _tracer(0.5)
    trace_id = (0x77 << 64) | (bound_of(TracingConfig(ratio=0.5)) + offset)
    drawn(trace_id) if sampled else drawn(trace_id, 0x99)
    with tracer.request(ROUTE, ROUTE):
        written, _ = tracer.on_record()
    assert written is not None and written.split("-")[1] == format(trace_id, "032x")
    assert written.endswith("-03" if sampled else "-02")
    assert len(exporter.get_finished_spans()) == (1 if sampled else 0)
    if not sampled:  # the relay's context, not an SDK span the SDK's sampler then dropped
        assert written.split("-")[2] == format(0x99, "016x")


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("ratio", [0.25, 1.0])
def test_the_spans_the_relay_decides_are_the_ones_the_configured_sampler_samples(
    sampler: str, ratio: float, settings_factory: Callable[..., Settings]
) -> None:
    """The relay samples a request span by its own rule and a child of a sampled span without asking the
    configured sampler: asked, it says the same, with the same trace state."""
    config = TracingConfig(sampler=sampler, ratio=ratio)
    kept = InMemorySpanExporter()
    tracer = Tracer.build(config, SimpleSpanProcessor(kept))
    app = create_app(settings_factory(), publisher=FakePublisher(), clock=lambda: float(NOW), tracer=tracer)
    with TestClient(app) as client:
        for _ in range(40):
            body, delivery_id = sample()
            headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
            assert client.post(ROUTE, content=body, headers=headers).status_code == 200
    spans = kept.get_finished_spans()
    if bound_of(config) == 0:  # always_off: nothing sampled, so nothing decided
        assert spans == ()
        return
    assert {span.name for span in spans} >= {f"POST {ROUTE}", "verify", "dedupe claim", "dedupe commit"}
    configured = sampler_of(config)
    for span in spans:
        assert span.context is not None
        parent = Context() if span.parent is None else trace.set_span_in_context(NonRecordingSpan(span.parent))
        asked = configured.should_sample(parent, span.context.trace_id, span.name)
        assert asked.decision is Decision.RECORD_AND_SAMPLE, (sampler, span.name)
        assert span.context.trace_state == (asked.trace_state or TraceState()), span.name
        assert span.context.trace_flags.sampled
    requests = [span for span in spans if span.parent is None]
    assert all(span.attributes and span.attributes["http.route"] == ROUTE for span in requests)
    assert any(span.name.startswith("send ") for span in spans)
    _roots_ask_the_configured_sampler(tracer, config)
    tracer.shutdown()


def _roots_ask_the_configured_sampler(tracer: Tracer, config: TracingConfig) -> None:
    """Roots (replay, drain, re-verification) get the configured sampler's decision and trace state; a child
    under a sampled span of the relay's is that span's, even where other code attached a context of its own."""
    configured = sampler_of(config)
    for index in range(200):
        span = tracer.start(f"root {index}", root=True)
        context = span.get_span_context()
        asked = configured.should_sample(Context(), context.trace_id, f"root {index}")
        expected = asked.decision.is_sampled()  # type: ignore[no-untyped-call]
        assert context.trace_flags.sampled is expected, (config.sampler, hex(context.trace_id))
        span.end()
    always = TracingConfig(sampler="always_on")
    with Tracer.build(always).root("sampled") as mine:  # a sampled span of the relay's is current, then other code
        state = TraceState([("k", "v")])
        foreign = SpanContext(0xABC << 64 | LOW, 0xDEF, is_remote=True, trace_flags=TraceFlags(0), trace_state=state)
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(foreign)))
        try:
            with tracer.child("under another context") as child:
                made = child.get_span_context()
        finally:
            otel_context.detach(token)
    # The relay's child is parented to the relay's current span, not to what other code attached inside it.
    assert made.trace_id == mine.get_span_context().trace_id and made.trace_flags.sampled
    assert made.trace_state == mine.get_span_context().trace_state
