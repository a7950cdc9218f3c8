"""The metrics of sources and parking, each group beside the code that moves it:
`SourceMetrics` by registry.py (reloads) and the app's upkeep (per-source timestamps),
`ParkingMetrics` by attendant.py, `DriftMetrics` by remote.py. `relay.metrics.Metrics` registers them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SourceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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


class ParkingMetrics:
    """Parked requests re-verified, expired and evicted, and the lot's size (parking itself is counted by
    the pipeline's verifier, which hands requests to it: `VerificationMetrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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
