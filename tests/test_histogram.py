"""relay.histogram.LoopHistogram exposes what prometheus_client's Histogram exposes for the same
observations: byte for byte, in the classic text format and in OpenMetrics (with exemplars)."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from relay.histogram import LoopHistogram
from relay.types import LATENCY_BUCKETS

Observation = tuple[str, float, dict[str, str] | None]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def expositions(
    kind: type[Histogram], buckets: tuple[float, ...], observations: list[Observation]
) -> tuple[bytes, bytes]:
    registry = CollectorRegistry()
    plain = kind("relay_plain_seconds", "Unlabelled.", buckets=buckets, registry=registry)
    by_op = kind("relay_by_op_seconds", "Labelled.", ["op"], buckets=buckets, registry=registry)
    by_op.labels("primed")  # a series made at 0, as relay.metrics primes them
    for op, amount, exemplar in observations:
        target = plain if op == "" else by_op.labels(op)
        target.observe(amount, exemplar)
    return generate_latest(registry), generate_openmetrics(registry)  # type: ignore[no-untyped-call]


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_created` and each exemplar's timestamp read time.time(): the same in both histograms."""
    monkeypatch.setattr(time, "time", lambda: 1_780_000_000.25)


amounts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, *LATENCY_BUCKETS, math.inf, -math.inf, math.nan]),
    st.floats(min_value=0, max_value=3),
)
exemplars: st.SearchStrategy[dict[str, str] | None] = st.one_of(
    st.none(), st.just({}), st.builds(lambda n: {"trace_id": f"{n:032x}"}, st.integers(0, 2**128 - 1))
)
observations = st.lists(st.tuples(st.sampled_from(["", "claim", "commit"]), amounts, exemplars), max_size=40)
bucket_sets = st.sampled_from([LATENCY_BUCKETS, (-1.0, 0.0, 1.0), (0.5, math.inf), (0.25,)])


@settings(max_examples=200, deadline=None)
@given(buckets=bucket_sets, drawn=observations)
def test_the_exposition_is_histograms_own(buckets: tuple[float, ...], drawn: list[Observation]) -> None:
    assert expositions(LoopHistogram, buckets, drawn) == expositions(Histogram, buckets, drawn)


def test_observations_after_a_collection_are_counted_once() -> None:
    """Collecting writes the counts into prometheus_client's values (set, not added): collecting twice, or
    observing between two collections, counts each observation once."""
    registry = CollectorRegistry()
    histogram = LoopHistogram("relay_twice_seconds", "Twice.", buckets=LATENCY_BUCKETS, registry=registry)
    histogram.observe(0.003)
    generate_latest(registry)
    histogram.observe(0.2)
    generate_latest(registry)
    assert registry.get_sample_value("relay_twice_seconds_count") == 2.0
    assert registry.get_sample_value("relay_twice_seconds_bucket", {"le": "0.005"}) == 1.0
    assert registry.get_sample_value("relay_twice_seconds_sum") == pytest.approx(0.203)


def test_created_series_off_as_in_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_metrics, "_use_created", False)
    drawn: list[Observation] = [("", 0.003, {"trace_id": TRACE_ID}), ("claim", 0.2, None)]
    loop, stock = expositions(LoopHistogram, LATENCY_BUCKETS, drawn), expositions(Histogram, LATENCY_BUCKETS, drawn)
    assert loop == stock
    assert b"_created" not in loop[0]


def test_an_exemplar_is_on_its_bucket_and_the_latest_one_kept() -> None:
    drawn: list[Observation] = [
        ("", 0.003, {"trace_id": "1" * 32}),
        ("", 0.004, {"trace_id": TRACE_ID}),
        ("", 0.004, None),
    ]
    _, openmetrics = expositions(LoopHistogram, LATENCY_BUCKETS, drawn)
    line = next(
        line for line in openmetrics.decode().splitlines() if line.startswith('relay_plain_seconds_bucket{le="0.005"}')
    )
    assert line == f'relay_plain_seconds_bucket{{le="0.005"}} 3.0 # {{trace_id="{TRACE_ID}"}} 0.004 1780000000.25'


def test_a_too_long_exemplar_is_refused_as_prometheus_client_refuses_it() -> None:
    histogram = LoopHistogram("relay_refused_seconds", "Refused.", buckets=LATENCY_BUCKETS, registry=None)
    with pytest.raises(ValueError, match="exceeding the limit of 128"):
        histogram.observe(0.1, {"trace_id": "f" * 130})


def test_a_labelled_parent_cannot_be_observed() -> None:
    histogram = LoopHistogram("relay_parent_seconds", "Parent.", ["op"], buckets=LATENCY_BUCKETS, registry=None)
    with pytest.raises(AttributeError):
        histogram.observe(0.1)
