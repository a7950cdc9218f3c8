"""`Settings`: every setting of the relay, each declared once on its field; and `KafkaTarget` for tools."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.routing import FAMILY, Route, Router, routes_for
from relay.settings.declare import merged_env, read
from relay.settings.kafka import KafkaSecurity
from relay.settings.redis import DEDUPE_SCHEMES, STORE_STOP_SECONDS, redis_url, sentinel_url
from relay.settings.sections import (
    DedupeSettings,
    HttpSettings,
    KafkaSettings,
    LogSettings,
    RoutingSettings,
    SourceSettings,
    SpoolSettings,
    TimeoutSettings,
)
from relay.settings.values import ConfigError, readable

_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True, kw_only=True)
class Settings(
    LogSettings,
    TimeoutSettings,
    RoutingSettings,
    DedupeSettings,
    HttpSettings,
    KafkaSettings,
    SpoolSettings,
    SourceSettings,
):
    """One frozen object built from `RELAY_*` variables (and an optional env file), checked whole. Its fields are
    declared by concern in relay/settings/sections.py; dataclasses collect them from the last base to the first,
    so they read in the order of `SECTIONS` (the first bad variable is the one named)."""

    def __post_init__(self) -> None:
        _check(self)

    def router(self) -> Router:
        """`RELAY_FAMILIES` each to its own topic, then the `RELAY_ROUTES` entries."""
        return Router(self.topic_prefix, routes_for(self.families, self.routes))

    @property
    def stop_bound_seconds(self) -> float:
        """Longest time from SIGTERM to exit: readiness delay + drain + spool drain + producer flush + late acks,
        and with Redis dedupe, the store operations of the late acknowledgements given up on and the clients'
        closes (STORE_STOP_SECONDS; a memory store's take no time)."""
        spool = self.spool_drain_seconds + self.spool_after_seconds if self.spool_dir is not None else 0.0
        store = 0.0 if self.dedupe_in_memory else STORE_STOP_SECONDS
        return (
            self.shutdown_delay_seconds
            + self.shutdown_timeout_seconds
            + spool
            + self.flush_timeout_seconds
            + 1.0
            + store
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from `env`; keys of the file named by `RELAY_CONFIG_FILE` apply where env is silent."""
        return cls(**read(cls, merged_env(env)))


def _check(settings: Settings) -> None:
    """The rules between settings: each refusal names the variable to change."""
    _check_sources(settings)
    if not _PREFIX.match(settings.topic_prefix):
        raise ConfigError("RELAY_TOPIC_PREFIX: letters, digits, '.', '_' and '-' only")
    if settings.topic_min_insync_replicas > settings.topic_replication_factor:
        raise ConfigError(
            "RELAY_TOPIC_MIN_INSYNC_REPLICAS: above RELAY_TOPIC_REPLICATION_FACTOR; no write could succeed"
        )
    if not 0 < settings.port < 65536:
        raise ConfigError(f"RELAY_PORT: {settings.port} is not a TCP port")
    if not settings.dedupe_url.startswith(DEDUPE_SCHEMES):
        raise ConfigError(
            "RELAY_DEDUPE_URL: memory://, redis://[user:password@]host:port/db, rediss://, unix://,"
            " or redis+sentinel://[user:password@]host:port[,host:port…]/master[/db] (rediss+sentinel:// for TLS)"
        )
    if "+sentinel://" in settings.dedupe_url:
        sentinel_url(settings.dedupe_url)  # its shape, checked at startup: a bad one fails here, by name
    elif not settings.dedupe_in_memory:
        redis_url(settings.dedupe_url)  # its query too
    _check_dedupe_tls(settings)
    if settings.dedupe_lease_seconds <= settings.publish_timeout_seconds:
        raise ConfigError("RELAY_DEDUPE_LEASE_SECONDS: must be longer than RELAY_PUBLISH_TIMEOUT_SECONDS")
    bad = [f for f in settings.families if not FAMILY.fullmatch(f)]
    if bad:
        raise ConfigError(f"RELAY_FAMILIES: invalid family name {bad[0]!r}")
    if settings.kafka_delivery_timeout_seconds < settings.publish_timeout_seconds:
        raise ConfigError("RELAY_KAFKA_DELIVERY_TIMEOUT_SECONDS: must be at least RELAY_PUBLISH_TIMEOUT_SECONDS")
    if "dlq" in settings.families:
        raise ConfigError("RELAY_FAMILIES: 'dlq' is reserved for the dead-letter topic")


def _check_sources(settings: Settings) -> None:
    if not settings.secrets and settings.sources_file is None:
        raise ConfigError(
            "RELAY_SOURCES_FILE or RELAY_MYTPE_SECRETS: set one (a sources file, or the secrets of /webhooks/mytpe)"
        )
    if settings.sources_poll_seconds > 2:
        raise ConfigError("RELAY_SOURCES_POLL_SECONDS: at most 2 (a changed secret must verify within 5 s)")
    if settings.parking_max_per_source > settings.parking_max_entries:
        raise ConfigError("RELAY_PARKING_MAX_PER_SOURCE: above RELAY_PARKING_MAX_ENTRIES")
    if settings.spool_dir is not None and settings.spool_after_seconds >= settings.publish_timeout_seconds:
        raise ConfigError("RELAY_SPOOL_AFTER_SECONDS: must be below RELAY_PUBLISH_TIMEOUT_SECONDS")
    if settings.spool_dir is not None and settings.spool_max_bytes < settings.max_body_bytes:
        raise ConfigError(
            "RELAY_SPOOL_MAX_BYTES: below RELAY_MAX_BODY_BYTES: the spool could not hold one body of that size, and"
            " /readyz, which asks room for one, would fail whenever Kafka is down"
        )


def _check_dedupe_tls(settings: Settings) -> None:
    files = {
        "RELAY_DEDUPE_TLS_CA_FILE": settings.dedupe_tls_ca_file,
        "RELAY_DEDUPE_TLS_CERT_FILE": settings.dedupe_tls_cert_file,
        "RELAY_DEDUPE_TLS_KEY_FILE": settings.dedupe_tls_key_file,
    }
    given = {variable: path for variable, path in files.items() if path is not None}
    if given and not settings.dedupe_url.startswith(("rediss://", "rediss+sentinel://")):
        raise ConfigError(f"{next(iter(given))}: set, but RELAY_DEDUPE_URL is not rediss:// (TLS)")
    if settings.dedupe_tls_key_file is not None and settings.dedupe_tls_cert_file is None:
        raise ConfigError("RELAY_DEDUPE_TLS_KEY_FILE: needs RELAY_DEDUPE_TLS_CERT_FILE, its certificate")
    for variable, path in given.items():
        readable(variable, path)


@dataclass(frozen=True, kw_only=True)
class KafkaTarget:
    """What tools that need no secret (`tail`) read from the same variables."""

    bootstrap_servers: tuple[str, ...]
    topic_prefix: str
    families: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaTarget:
        fields = read(Settings, merged_env(env))
        return cls(
            bootstrap_servers=fields.get("kafka_bootstrap_servers", Settings.kafka_bootstrap_servers),
            topic_prefix=fields.get("topic_prefix", Settings.topic_prefix),
            families=fields.get("families", Settings.families),
            routes=fields.get("routes", ()),
            security=fields.get("kafka_security", KafkaSecurity()),
        )

    def topics(self) -> list[str]:
        return Router(self.topic_prefix, routes_for(self.families, self.routes)).topics()
