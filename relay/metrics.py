"""The relay's Prometheus metrics, owned by one registry per app instance.

Each concern declares its own group beside the code that moves it; `Metrics` registers them all:

- `RequestMetrics` (here): moved by relay/http/webhook.py and probes.py;
- `KafkaMetrics` (here): the producer's, read from it by relay/http/app.py;
- `VerificationMetrics`, `DeliveryMetrics`: relay/pipeline/metrics.py;
- `SourceMetrics`, `ParkingMetrics`, `DriftMetrics`: relay/sources/metrics.py;
- `SpoolMetrics`: relay/spool/metrics.py.

A collaborator is handed `Metrics` and types it as the group it moves.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from relay import __version__
from relay.histogram import LoopHistogram
from relay.pipeline.metrics import DEDUPE_OPS, PARKING_REFUSALS, QUARANTINE_REASONS, PipelineMetrics
from relay.sources.config import NO_SOURCE
from relay.sources.metrics import DriftMetrics
from relay.spool.metrics import SpoolMetrics
from relay.types import LATENCY_BUCKETS

__all__ = [
    "DEDUPE_OPS",
    "NOT_FOUND",
    "OUTCOMES",
    "PARKING_REFUSALS",
    "QUARANTINE_REASONS",
    "REJECTIONS",
    "UNAVAILABLE_CAUSES",
    "UNKNOWN_SOURCE",
    "KafkaMetrics",
    "Metrics",
    "RequestMetrics",
]

# Every bounded label value the relay emits (here and in each group's module). Each series is created at 0
# on start, so a counter's first increment is a visible increase (an alert on `increase()` fires on the very
# first quarantined event) and ratio denominators exist before any traffic. tests/test_metrics.py keeps
# these lists complete.
OUTCOMES = ("accepted", "duplicate", "quarantined", "unavailable", "internal_error")
REJECTIONS = (
    "missing_header",
    "malformed_header",
    "stale_timestamp",
    "future_timestamp",
    "bad_signature",
    "body_too_large",
    "body_timeout",
    "client_disconnected",
    "wrong_instance",
    "rotation_window",
    "parking_error",
)
NOT_FOUND = ("unknown_source",)
UNKNOWN_SOURCE = NO_SOURCE
"""The `source` label of a request whose path names no source; every other value is a name from the file."""
UNAVAILABLE_CAUSES = (
    "kafka_timeout",
    "partition_stalled",
    "kafka_error",
    "in_flight",
    "overloaded",
    "shutting_down",
    "dedupe_error",
    "spool_full",
    "spool_error",
    "kafka_refused",
)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "mytpe_relay_requests",
            "Webhook requests by source and outcome (status, or the rejection reason).",
            ["source", "outcome"],
            registry=r,
        )
        self.verification_failures = Counter(
            "mytpe_relay_verification_failures",
            "Requests rejected before verification passed, by source and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.publish_errors = Counter(
            "mytpe_relay_publish_errors", "Deliveries answered 503 unavailable, by cause.", ["reason"], registry=r
        )
        self.request_duration = LoopHistogram(
            "mytpe_relay_request_duration_seconds",
            "Time to answer a webhook request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge("mytpe_relay_ready", "1 when the last readiness check passed.", registry=r)
        self.build_info = Gauge(
            "mytpe_relay_build_info", "Always 1; the running relay's version.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)


class KafkaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.kafka_credentials_changed = Gauge(
            "mytpe_relay_kafka_credentials_changed",
            "1 when the Kafka password, key or certificate files on disk differ from those the producer was"
            " built with: restart the relay to use them.",
            registry=r,
        )
        self.producer_replacements = Counter(
            "mytpe_relay_kafka_producer_replacements",
            "Kafka producers replaced after a fatal idempotence error (sequence lost in an outage).",
            registry=r,
        )


class Metrics(RequestMetrics, PipelineMetrics, KafkaMetrics, DriftMetrics, SpoolMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        RequestMetrics.__init__(self, self.registry)
        PipelineMetrics.__init__(self, self.registry)
        KafkaMetrics.__init__(self, self.registry)
        DriftMetrics.__init__(self, self.registry)
        SpoolMetrics.__init__(self, self.registry)

    def prime(self, *, topics: list[str]) -> None:
        """Create every labelled series at 0, so that the first event of each kind shows as an increase."""
        self.requests.labels(UNKNOWN_SOURCE, NOT_FOUND[0])
        self.verification_failures.labels(UNKNOWN_SOURCE, NOT_FOUND[0])
        for reason in QUARANTINE_REASONS:
            self.quarantined.labels(reason)
        for cause in UNAVAILABLE_CAUSES:
            self.publish_errors.labels(cause)
        for op in DEDUPE_OPS:
            self.dedupe_errors.labels(op)
            self.dedupe_duration.labels(op)
        for topic in topics:
            self.published.labels(topic)

    def prime_source(self, name: str, secrets: int) -> None:
        """The series of one source, at 0: on start, and for each source a reload adds."""
        for outcome in (*OUTCOMES, *REJECTIONS):
            self.requests.labels(name, outcome)
        for reason in REJECTIONS:
            self.verification_failures.labels(name, reason)
        for index in range(secrets):
            self.secret_matches.labels(name, str(index))
        self.duplicates.labels(name)
        for counter in (self.parked, self.reverified, self.parked_expired, self.parked_evicted):
            counter.labels(name)
        for reason in PARKING_REFUSALS:
            self.parking_refused.labels(name, reason)

    def resize_secrets(self, name: str, before: int, after: int) -> None:
        """A source's secret list changed length: prime the new indexes, remove those past its end."""
        for index in range(after):
            self.secret_matches.labels(name, str(index))
        for index in range(after, before):
            with contextlib.suppress(KeyError):
                self.secret_matches.remove(name, str(index))

    def forget_source(self, name: str, secrets: int) -> None:
        """Remove the series of a source no longer served, so the label set stays that of the file."""
        series = [
            *((self.requests, (name, outcome)) for outcome in (*OUTCOMES, *REJECTIONS)),
            *((self.verification_failures, (name, reason)) for reason in REJECTIONS),
            *((self.secret_matches, (name, str(index))) for index in range(secrets)),
            *((self.parking_refused, (name, reason)) for reason in PARKING_REFUSALS),
            *(
                (counter, (name,))
                for counter in (self.duplicates, self.parked, self.reverified, self.parked_expired, self.parked_evicted)
            ),
            (self.source_secrets_changed, (name,)),
            (self.rotation_window_until, (name,)),
        ]
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
