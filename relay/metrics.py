"""The relay's Prometheus metrics, owned by one registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from relay import __version__

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Every bounded label value the relay emits. Each series is created at 0 on start, so a counter's first
# increment is a visible increase (an alert on `increase()` fires on the very first quarantined event)
# and ratio denominators exist before any traffic. tests/test_metrics.py keeps these lists complete.
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
)
QUARANTINE_REASONS = (
    "not_an_object",
    "invalid_utf8",
    "malformed_json",
    "missing_event",
    "missing_data",
    "unroutable_event",
)
UNAVAILABLE_CAUSES = ("kafka_timeout", "kafka_error", "in_flight", "overloaded", "shutting_down", "dedupe_error")
DEDUPE_OPS = ("claim", "commit", "release", "extend")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mytpe_relay_requests",
            "Webhook requests by outcome (status, or the rejection reason).",
            ["outcome"],
            registry=r,
        )
        self.verification_failures = Counter(
            "mytpe_relay_verification_failures",
            "Requests rejected before verification passed, by reason.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter("mytpe_relay_duplicates", "Verified deliveries already relayed.", registry=r)
        self.quarantined = Counter(
            "mytpe_relay_quarantined", "Verified bodies sent to the DLQ, by reason.", ["reason"], registry=r
        )
        self.published = Counter("mytpe_relay_published", "Records acknowledged by Kafka.", ["topic"], registry=r)
        self.publish_errors = Counter(
            "mytpe_relay_publish_errors", "Deliveries answered 503, by cause.", ["reason"], registry=r
        )
        self.secret_matches = Counter(
            "mytpe_relay_secret_matches",
            "Verified requests by index of the configured secret that matched.",
            ["secret_index"],
            registry=r,
        )
        self.request_duration = Histogram(
            "mytpe_relay_request_duration_seconds",
            "Time to answer a webhook request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            "mytpe_relay_publish_duration_seconds",
            "Time from send to Kafka acknowledgement (acks=all).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_lag = Histogram(
            "mytpe_relay_delivery_lag_seconds",
            "Now minus the signed MyTPE timestamp, at publish.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("mytpe_relay_requests_in_flight", "Webhook requests being handled.", registry=r)
        self.dedupe_entries = Gauge(
            "mytpe_relay_dedupe_entries", "Delivery ids remembered by the dedupe store.", registry=r
        )
        self.dedupe_duration = Histogram(
            "mytpe_relay_dedupe_duration_seconds",
            "Dedupe store round trips, by operation.",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dedupe_errors = Counter(
            "mytpe_relay_dedupe_errors", "Dedupe store failures, by operation.", ["op"], registry=r
        )
        self.ready = Gauge("mytpe_relay_ready", "1 when the last readiness check passed.", registry=r)
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
        self.build_info = Gauge(
            "mytpe_relay_build_info", "Always 1; the running relay's version.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)

    def prime(self, *, topics: list[str], secrets: int) -> None:
        """Create every labelled series at 0, so that the first event of each kind shows as an increase."""
        for outcome in (*OUTCOMES, *REJECTIONS):
            self.requests.labels(outcome)
        for reason in REJECTIONS:
            self.verification_failures.labels(reason)
        for reason in QUARANTINE_REASONS:
            self.quarantined.labels(reason)
        for cause in UNAVAILABLE_CAUSES:
            self.publish_errors.labels(cause)
        for op in DEDUPE_OPS:
            self.dedupe_errors.labels(op)
            self.dedupe_duration.labels(op)
        for topic in topics:
            self.published.labels(topic)
        for index in range(secrets):
            self.secret_matches.labels(str(index))
