"""The relay's Prometheus metrics, owned by one registry per app instance."""

from __future__ import annotations

import contextlib

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
    "wrong_instance",
    "rotation_window",
)
NOT_FOUND = ("unknown_source",)
UNKNOWN_SOURCE = "unknown"
"""The `source` label of a request whose path names no source; every other value is a name from the file."""
PARKING_REFUSALS = ("rate_limited", "source_full", "full", "error")
QUARANTINE_REASONS = (
    "not_an_object",
    "invalid_utf8",
    "malformed_json",
    "missing_event",
    "missing_data",
    "unroutable_event",
    "kafka_refused",
)
UNAVAILABLE_CAUSES = (
    "kafka_timeout",
    "kafka_error",
    "in_flight",
    "overloaded",
    "shutting_down",
    "dedupe_error",
    "spool_full",
    "spool_error",
    "kafka_refused",
)
DEDUPE_OPS = ("claim", "commit", "release", "extend")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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
        self.duplicates = Counter(
            "mytpe_relay_duplicates", "Verified deliveries already relayed, by source.", ["source"], registry=r
        )
        self.quarantined = Counter(
            "mytpe_relay_quarantined", "Verified bodies sent to the DLQ, by reason.", ["reason"], registry=r
        )
        self.published = Counter("mytpe_relay_published", "Records acknowledged by Kafka.", ["topic"], registry=r)
        self.publish_errors = Counter(
            "mytpe_relay_publish_errors", "Deliveries answered 503, by cause.", ["reason"], registry=r
        )
        self.secret_matches = Counter(
            "mytpe_relay_secret_matches",
            "Verified requests by source and index of the source's secret that matched (0: the current one).",
            ["source", "secret_index"],
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
        self.config_reloads = Counter(
            "mytpe_relay_config_reloads",
            "Reloads of RELAY_SOURCES_FILE by result: an error keeps the previous sources.",
            ["result"],
            registry=r,
        )
        self.config_generation = Gauge(
            "mytpe_relay_config_generation", "The generation of the sources being served (1 at start).", registry=r
        )
        self.config_last_reload_successful = Gauge(
            "mytpe_relay_config_last_reload_successful",
            "1 when the last read of RELAY_SOURCES_FILE was applied or unchanged, 0 after an invalid file.",
            registry=r,
        )
        self.config_last_reload_success = Gauge(
            "mytpe_relay_config_last_reload_success_timestamp_seconds",
            "When sources were last loaded successfully (Unix time).",
            registry=r,
        )
        self.source_secrets_changed = Gauge(
            "mytpe_relay_source_secrets_changed_timestamp_seconds",
            "When each source's secret list last changed (Unix time; the start time for a source never changed).",
            ["source"],
            registry=r,
        )
        self.rotation_window_until = Gauge(
            "mytpe_relay_rotation_window_until_timestamp_seconds",
            "The end of each source's rotation window as served (Unix time; 0: none). `webhook rotate` waits for it.",
            ["source"],
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
        self.reverified = Counter(
            "mytpe_relay_reverified",
            "Parked requests that verified after their source's secrets changed, and were relayed.",
            ["source"],
            registry=r,
        )
        self.parked_expired = Counter(
            "mytpe_relay_parked_expired",
            "Parked requests dropped unverified at the end of their parking age.",
            ["source"],
            registry=r,
        )
        self.parked_evicted = Counter(
            "mytpe_relay_parked_evicted",
            "Parked requests pushed out unverified, oldest first, to make room for newer ones (a flood, or a"
            " regeneration larger than RELAY_PARKING_MAX_PER_SOURCE).",
            ["source"],
            registry=r,
        )
        self.parked_entries = Gauge("mytpe_relay_parked_entries", "Requests parked now.", registry=r)
        self.parked_bytes = Gauge("mytpe_relay_parked_bytes", "Bytes parked now, bodies and overhead.", registry=r)
        self.parked_oldest_age = Gauge(
            "mytpe_relay_parked_oldest_age_seconds", "Age of the oldest parked request (0 when none).", registry=r
        )
        self.source_drift = Gauge(
            "mytpe_relay_source_drift",
            "1 while what MyTPE has for the source differs from the relay: its webhook URL (or the endpoint is"
            " inactive), or its masked secret matches none of the source's secrets.",
            ["source", "aspect"],
            registry=r,
        )
        self.drift_checks = Counter(
            "mytpe_relay_drift_checks",
            "Drift checks against MyTPE's API, by source and result (ok, drift, error).",
            ["source", "result"],
            registry=r,
        )
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
            buckets=_LATENCY_BUCKETS,
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
        self.build_info = Gauge(
            "mytpe_relay_build_info", "Always 1; the running relay's version.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)

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
