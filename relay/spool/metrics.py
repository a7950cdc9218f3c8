"""The spool's metrics: moved by spool.py (size, writes, deletes, stuck), drainer.py (drained, held, denied
topics) and recovery.py (found in Kafka). Registered with the app's registry by `relay.metrics.Metrics`."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from relay.types import LATENCY_BUCKETS


class SpoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.spool_entries = Gauge(
            "mytpe_relay_spool_entries", "Records in the local spool (RELAY_SPOOL_DIR).", registry=r
        )
        self.spool_bytes = Gauge("mytpe_relay_spool_bytes", "Bytes of the records in the spool.", registry=r)
        self.spool_oldest_age = Gauge(
            "mytpe_relay_spool_oldest_age_seconds", "Age of the oldest spooled record (0 when none).", registry=r
        )
        self.spool_write_duration = Histogram(
            "mytpe_relay_spool_write_duration_seconds",
            "One group-committed spool write, fsync included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.spooled = Counter(
            "mytpe_relay_spooled", "Records written to the spool (answered 200 spooled).", registry=r
        )
        self.spool_drained = Counter(
            "mytpe_relay_spool_drained", "Spooled records acknowledged by Kafka and removed from the spool.", registry=r
        )
        self.spool_set_aside = Gauge(
            "mytpe_relay_spool_set_aside_files",
            "Spool files set aside as corrupt beside the spool, not drained (`spool drain` recovers them).",
            registry=r,
        )
        self.spool_delete_failures = Counter(
            "mytpe_relay_spool_delete_failures",
            "Spool deletes of Kafka-acknowledged records that SQLite refused (retried alone, never republished).",
            registry=r,
        )
        self.spool_found_in_kafka = Counter(
            "mytpe_relay_spool_found_in_kafka",
            "Spooled records a killed process had sent, found in Kafka at start and removed unpublished"
            " (RELAY_SPOOL_RECOVERY_CHECK).",
            registry=r,
        )
        self.spool_acked_undeleted = Gauge(
            "mytpe_relay_spool_acked_undeleted",
            "Records Kafka acknowledged whose delete from the spool failed so far (the relay is not ready meanwhile).",
            registry=r,
        )
        self.spool_stuck = Gauge(
            "mytpe_relay_spool_stuck",
            "Spooled records Kafka and the DLQ both refused for good: kept on disk, retried at the next start.",
            registry=r,
        )
        self.spool_held = Gauge(
            "mytpe_relay_spool_held",
            "Spooled records whose first publish is still in the producer (settled or released within a bound).",
            registry=r,
        )
        self.spool_denied_topics = Gauge(
            "mytpe_relay_spool_denied_topics",
            "Topics a spool drain found denied (an ACL): their spooled records wait, new ones are answered 503.",
            registry=r,
        )


class DrainMetrics(Protocol):
    """What the drainer moves: its SpoolMetrics, and the DLQ count of the pipeline's DeliveryMetrics."""

    @property
    def spool_drained(self) -> Counter: ...
    @property
    def spool_held(self) -> Gauge: ...
    @property
    def spool_denied_topics(self) -> Gauge: ...
    @property
    def quarantined(self) -> Counter: ...
