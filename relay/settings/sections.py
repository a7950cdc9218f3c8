"""The settings by concern, each declared once on its field: the variable, the default, the parser (which
holds the bounds), whether it is secret, and what docs/configuration.md says of it. `Settings` joins them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.routing import Route
from relay.settings import parsers as p
from relay.settings.declare import group, setting
from relay.settings.kafka import KafkaSecurity
from relay.settings.values import Secret

# Each field below is one setting: setting(variable, default, parser, help, *, secret=, shown=, kind=, read=, also=).
# The layout is a table, kept by hand: ruff format would spread each declaration over eight lines.


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    """Sources and MyTPE's API: who may post, with which secrets, and how the relay reaches MyTPE."""

    # fmt: off
    secrets: tuple[Secret, ...] = setting(
        "RELAY_MYTPE_SECRETS", (), p.secrets,
        "the secrets of the source `default`, served at `/webhooks/mytpe`; all are accepted",
        secret=True,
        shown="this or `RELAY_SOURCES_FILE` is **required**",
    )
    sources_file: Path | None = setting(
        "RELAY_SOURCES_FILE", None, Path,
        "a YAML file of sources: each MyTPE endpoint at `/webhooks/mytpe/{name}` with its own secrets, reloaded "
        "without a restart ([Sources](sources.md))",
    )
    sources_poll_seconds: float = setting(
        "RELAY_SOURCES_POLL_SECONDS", 1.0, p.positive_float,
        "how often the sources file's SHA-256 is compared (at most 2); `SIGHUP` also reloads",
    )
    rotation_retry_after_seconds: int = setting(
        "RELAY_ROTATION_RETRY_AFTER_SECONDS", 60, p.positive_int,
        "`Retry-After` of the 503 `rotation_window`",
    )
    parking_max_entries: int = setting(
        "RELAY_PARKING_MAX_ENTRIES", 10_000, p.positive_int,
        "parking's room overall, in requests; at a bound the oldest make room",
    )
    parking_max_bytes: int = setting(
        "RELAY_PARKING_MAX_BYTES", 64 * 1024 * 1024, p.positive_int,
        "parking's room overall, in bytes",
    )
    parking_max_per_source: int = setting(
        "RELAY_PARKING_MAX_PER_SOURCE", 5_000, p.positive_int,
        "parking's room per source, in requests (at most `RELAY_PARKING_MAX_ENTRIES`)",
    )
    parking_max_age_seconds: float = setting(
        "RELAY_PARKING_MAX_AGE_SECONDS", 86_400.0, p.positive_float,
        "age at which a parked request is dropped unverified",
    )
    parking_rate_per_source: float = setting(
        "RELAY_PARKING_RATE_PER_SOURCE", 20.0, p.positive_float,
        "accepted and no longer used: parking is bounded by room, not rate",
    )
    parking_burst: int = setting(
        "RELAY_PARKING_BURST", 200, p.positive_int,
        "accepted and no longer used: parking is bounded by room, not rate",
    )
    public_url: str | None = setting(
        "RELAY_PUBLIC_URL", None, p.public_url,
        "the relay's public base URL as MyTPE calls it (`https://hooks.example.com`): `webhook register` and "
        "drift checks compare with it + the source's path",
        shown="unset (no drift checks)",
        show=p.shown_url,
    )
    mytpe_api_key: Secret | None = setting(
        "RELAY_MYTPE_API_KEY", None, None,
        "MyTPE API key shared by the sources (a source's `mytpe.api_key_file` overrides it); a file is read again"
        " at each call, so a rotated mounted Secret applies without a restart",
        read=p.secret_or_file,
        secret=True,
        also=("RELAY_MYTPE_API_KEY_FILE",),
    )
    mytpe_api_secret: Secret | None = setting(
        "RELAY_MYTPE_API_SECRET", None, None,
        "MyTPE API secret, likewise (a source's `mytpe.api_secret_file` overrides it)",
        read=p.secret_or_file,
        secret=True,
        also=("RELAY_MYTPE_API_SECRET_FILE",),
    )
    drift_check_seconds: float = setting(
        "RELAY_MYTPE_DRIFT_CHECK_SECONDS", 300.0, p.positive_float,
        "period of the drift checks, ±10% jitter, doubling while MyTPE fails, up to eight times the period",
    )
    mytpe_api_timeout_seconds: float = setting(
        "RELAY_MYTPE_API_TIMEOUT_SECONDS", 10.0, p.positive_float,
        "each wait of a call to MyTPE's API, twice it for the whole answer (4 attempts on 5xx and timeouts; a call "
        "whose answer holds a one-time secret is not retried blindly)",
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class SpoolSettings:
    """The durable spool: where records wait on disk while Kafka does not acknowledge."""

    # fmt: off
    spool_dir: Path | None = setting(
        "RELAY_SPOOL_DIR", None, Path,
        "a directory for the durable spool (SQLite, [the spool](spool.md)); unset, there is no spool and nothing"
        " changes",
    )
    spool_after_seconds: float = setting(
        "RELAY_SPOOL_AFTER_SECONDS", 2.0, p.positive_float,
        "how long a record waits for Kafka's acknowledgement before it is spooled (below "
        "`RELAY_PUBLISH_TIMEOUT_SECONDS`)",
    )
    spool_max_bytes: int = setting(
        "RELAY_SPOOL_MAX_BYTES", 1024 * 1024 * 1024, p.positive_int,
        "the spool's cap; full is 503 `spool_full` with `Retry-After`, never an eviction",
    )
    spool_drain_seconds: float = setting(
        "RELAY_SPOOL_DRAIN_SECONDS", 10.0, p.non_negative_float,
        "on SIGTERM, how long to drain the spool to Kafka before exiting (the rest waits on disk)",
    )
    spool_recovery_check: bool = setting(
        "RELAY_SPOOL_RECOVERY_CHECK", False, p.boolean,
        "at start, read back from Kafka the spooled records a killed process had in flight and drop those already"
        " there, instead of publishing them again ([guarantees](guarantees.md) §9; needs Read and Describe on the"
        " topics, no group)",
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Kafka: the brokers, how the clients authenticate, and the topics `topics apply` makes."""

    # fmt: off
    kafka_bootstrap_servers: tuple[str, ...] = setting(
        "RELAY_KAFKA_BOOTSTRAP_SERVERS", ("127.0.0.1:9092",), p.servers,
        "the Kafka brokers to bootstrap from",
    )
    kafka_security: KafkaSecurity = group(KafkaSecurity)
    topic_prefix: str = setting("RELAY_TOPIC_PREFIX", "mytpe", str, "topic prefix: letters, digits, `.`, `_` and `-`")
    topic_partitions: int = setting(
        "RELAY_TOPIC_PARTITIONS", 6, p.positive_int,
        "the partitions `topics apply` creates topics with (its option overrides)",
    )
    topic_replication_factor: int = setting(
        "RELAY_TOPIC_REPLICATION_FACTOR", 3, p.positive_int,
        "the replication factor `topics apply` creates topics with",
    )
    topic_min_insync_replicas: int = setting(
        "RELAY_TOPIC_MIN_INSYNC_REPLICAS", 2, p.positive_int,
        "the `min.insync.replicas` `topics apply` sets and raises to (at most the replication factor)",
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Listening: the address, and what a request must be to be read."""

    # fmt: off
    host: str = setting("RELAY_HOST", "0.0.0.0", str, "listen address")
    port: int = setting("RELAY_PORT", 8080, p.positive_int, "listen port")
    replay_window_seconds: int = setting(
        "RELAY_REPLAY_WINDOW_SECONDS", 300, p.positive_int,
        "allowed `abs(now - timestamp)`",
    )
    max_body_bytes: int = setting(
        "RELAY_MAX_BODY_BYTES", 262144, p.positive_int,
        "larger bodies get 413, refused from `Content-Length` or while streaming",
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class DedupeSettings:
    """Dedupe: where delivery ids are remembered, and for how long."""

    # fmt: off
    dedupe_url: str = setting(
        "RELAY_DEDUPE_URL", "memory://", str,
        "`memory://` (one process), or Redis shared by all replicas: `redis://[user:password@]host:port/db`, "
        "`rediss://` (TLS), `unix://`, or a Sentinel-managed master "
        "`redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]` (`rediss+sentinel://` for TLS). "
        "A Redis URL's query takes the redis-py options docs/dedupe.md lists (`?socket_timeout=5`), checked at "
        "startup: not those the relay decides (TLS's, the replies' decoding), nor values no connection can use; "
        "`max_connections`, if set, at least 2 (parks beyond the parking lot's pool wait for a connection)",
        secret=True,
        kind="a URL",
    )
    dedupe_tls_ca_file: Path | None = setting(
        "RELAY_DEDUPE_TLS_CA_FILE", None, Path,
        "`rediss://`: PEM CA the server is verified against (hostname checked), trusted beside the system trust "
        "store (redis-py loads both); unset: the system trust store alone",
    )
    dedupe_tls_cert_file: Path | None = setting(
        "RELAY_DEDUPE_TLS_CERT_FILE", None, Path,
        "`rediss://`: a client certificate, for servers with `tls-auth-clients yes`",
    )
    dedupe_tls_key_file: Path | None = setting(
        "RELAY_DEDUPE_TLS_KEY_FILE", None, Path,
        "`rediss://`: the client certificate's key; the key may be in the certificate file",
    )
    dedupe_ttl_seconds: int = setting(
        "RELAY_DEDUPE_TTL_SECONDS", 259200, p.positive_int,
        "how long a relayed delivery id is remembered",
        shown="`259200` (3 days)",
    )
    dedupe_max_entries: int = setting(
        "RELAY_DEDUPE_MAX_ENTRIES", 1_000_000, p.positive_int,
        "size cap of the in-memory store; the oldest ids go first",
    )
    dedupe_lease_seconds: float = setting(
        "RELAY_DEDUPE_LEASE_SECONDS", 15.0, p.positive_float,
        "Redis only: an in-flight claim's lease, so a crashed replica blocks a delivery at most this long; longer"
        " than the publish timeout",
    )
    dedupe_fail_open: bool = setting(
        "RELAY_DEDUPE_FAIL_OPEN", False, p.boolean,
        "Redis only: `true` publishes without dedupe while Redis is down (duplicates possible) instead of "
        "answering 503",
    )
    # fmt: on

    @property
    def dedupe_in_memory(self) -> bool:
        """`memory://`: this process's own store (and parking lot); else Redis, shared by every replica."""
        return self.dedupe_url.startswith("memory://")


@dataclass(frozen=True, kw_only=True)
class RoutingSettings:
    """Routing: which topic each event family goes to."""

    # fmt: off
    families: tuple[str, ...] = setting(
        "RELAY_FAMILIES", ("transaction", "pay_link"), p.names,
        "event families with a topic `{prefix}.{family}`; others go to the DLQ",
    )
    routes: tuple[Route, ...] = setting(
        "RELAY_ROUTES", (), p.routes,
        "the family's events go to `{prefix}.{topic}`, keyed by `data.<key.path>` (default `data.{family}.id`, "
        "then `data.id`). Overrides `RELAY_FAMILIES` for the same family; several families may share a topic. For"
        " the newer MyTPE generation, e.g. `payment_link=pay_link,trader=kyc,identification=kyc`",
        show=p.shown_routes,
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class TimeoutSettings:
    """Timeouts and shutdown: how long each wait may last."""

    # fmt: off
    publish_timeout_seconds: float = setting(
        "RELAY_PUBLISH_TIMEOUT_SECONDS", 10.0, p.positive_float,
        "longest wait for Kafka's acknowledgement before answering 503 (one timer per cohort of a batch: a record "
        "waits between 0.9 and 1.0 times this)",
    )
    kafka_delivery_timeout_seconds: float = setting(
        "RELAY_KAFKA_DELIVERY_TIMEOUT_SECONDS", 120.0, p.kafka_seconds,
        "how long the producer keeps retrying one record (aiokafka `request_timeout_ms`, like Java's "
        "`delivery.timeout.ms`); at least the publish timeout",
    )
    startup_timeout_seconds: float = setting(
        "RELAY_STARTUP_TIMEOUT_SECONDS", 30.0, p.positive_float,
        "longest wait for Kafka at startup",
    )
    inflight_wait_seconds: float = setting(
        "RELAY_INFLIGHT_WAIT_SECONDS", 5.0, p.positive_float,
        "how long a concurrent duplicate waits for the first attempt's outcome",
    )
    max_in_flight: int = setting(
        "RELAY_MAX_IN_FLIGHT", 512, p.positive_int,
        "deliveries held at once (requests being handled plus records awaiting a late ack); beyond it a fast 503",
    )
    body_timeout_seconds: float = setting(
        "RELAY_BODY_TIMEOUT_SECONDS", 10.0, p.positive_float,
        "a request's body must arrive within this, or 503 body_timeout",
    )
    header_timeout_seconds: float = setting(
        "RELAY_HEADER_TIMEOUT_SECONDS", 10.0, p.positive_float,
        "a request's headers must arrive within this, or the connection is closed",
    )
    shutdown_delay_seconds: float = setting(
        "RELAY_SHUTDOWN_DELAY_SECONDS", 3.0, p.non_negative_float,
        "after SIGTERM, readiness is false but traffic is still served this long",
    )
    shutdown_timeout_seconds: int = setting(
        "RELAY_SHUTDOWN_TIMEOUT_SECONDS", 15, p.positive_int,
        "then in-flight requests are drained for at most this long",
    )
    flush_timeout_seconds: float = setting(
        "RELAY_FLUSH_TIMEOUT_SECONDS", 5.0, p.positive_float,
        "then the producer flushes for at most this long",
    )
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """Logs."""

    # fmt: off
    log_level: str = setting("RELAY_LOG_LEVEL", "INFO", p.log_level, "`DEBUG` logs one line per request")
    log_format: str = setting(
        "RELAY_LOG_FORMAT", "text", p.log_format,
        "`json` (one object per line, for log shippers; the image's default) or `text`",
    )
    # fmt: on


SECTIONS = (
    SourceSettings,
    SpoolSettings,
    KafkaSettings,
    HttpSettings,
    DedupeSettings,
    RoutingSettings,
    TimeoutSettings,
    LogSettings,
)
"""In the order of docs/configuration.md; `Settings` lists them in reverse, as dataclasses collect fields."""
