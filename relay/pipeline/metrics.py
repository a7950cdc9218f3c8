"""The pipeline's metrics, beside the code that moves them: `VerificationMetrics` by verifier.py,
`DeliveryMetrics` by deliverer.py (and relay.py's DLQ count). `PipelineMetrics` is every group that
`compose` hands out; `relay.metrics.Metrics` registers them all with the app's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from relay.histogram import LoopHistogram
from relay.sources.metrics import ParkingMetrics, SourceMetrics
from relay.types import LATENCY_BUCKETS

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Bounded label values, each series created at 0 on start (relay.metrics.Metrics.prime).
PARKING_REFUSALS = ("rate_limited", "source_full", "full", "error")
QUARANTINE_REASONS = (
    "not_an_object",
    "invalid_utf8",
    "malformed_json",
    "missing_event",
    "missing_data",
    "malformed_delivery_id",
    "unroutable_event",
    "kafka_refused",
    "spool_damaged",
)
DEDUPE_OPS = ("claim", "commit", "release", "extend")


class VerificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.secret_matches = Counter(
            "mytpe_relay_secret_matches",
            "Verified requests by source and index of the source's secret that matched (0: the current one).",
            ["source", "secret_index"],
            registry=r,
        )
        self.parked = Counter(
            "mytpe_relay_parked",
            "Fresh requests whose signature matched no secret of their source, parked for re-verification.",
            ["source"],
            registry=r,
        )
        self.parking_refused = Counter(
            "mytpe_relay_parking_refused",
            "Bad-signature requests not parked, by source and reason: full (larger than RELAY_PARKING_MAX_BYTES),"
            " error (the store did not answer); rate_limited and source_full are no longer emitted.",
            ["source", "reason"],
            registry=r,
        )


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.duplicates = Counter(
            "mytpe_relay_duplicates", "Verified deliveries already relayed, by source.", ["source"], registry=r
        )
        self.quarantined = Counter(
            "mytpe_relay_quarantined", "Verified bodies sent to the DLQ, by reason.", ["reason"], registry=r
        )
        self.published = Counter("mytpe_relay_published", "Records acknowledged by Kafka.", ["topic"], registry=r)
        self.publish_duration = LoopHistogram(
            "mytpe_relay_publish_duration_seconds",
            "Time from send to Kafka acknowledgement (acks=all).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_lag = LoopHistogram(
            "mytpe_relay_delivery_lag_seconds",
            "Now minus the signed MyTPE timestamp, at publish.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("mytpe_relay_requests_in_flight", "Webhook requests being handled.", registry=r)
        self.dedupe_entries = Gauge(
            "mytpe_relay_dedupe_entries", "Delivery ids remembered by the dedupe store.", registry=r
        )
        self.dedupe_duration = LoopHistogram(
            "mytpe_relay_dedupe_duration_seconds",
            "Dedupe store round trips, by operation.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dedupe_errors = Counter(
            "mytpe_relay_dedupe_errors", "Dedupe store failures, by operation.", ["op"], registry=r
        )


class PipelineMetrics(VerificationMetrics, DeliveryMetrics, SourceMetrics, ParkingMetrics):
    """The groups of the pipeline's collaborators and of the sources and parking they are wired to."""

    def __init__(self, registry: CollectorRegistry) -> None:
        VerificationMetrics.__init__(self, registry)
        DeliveryMetrics.__init__(self, registry)
        SourceMetrics.__init__(self, registry)
        ParkingMetrics.__init__(self, registry)
