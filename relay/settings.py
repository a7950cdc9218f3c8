"""Configuration: one frozen object built from `RELAY_*` variables (and an optional env file)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar, cast
from urllib.parse import unquote, urlsplit

from relay.logs import FORMATS
from relay.routing import FAMILY, Route, Router, parse_route, routes_for

T = TypeVar("T")

_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class ConfigError(ValueError):
    """An invalid or missing setting; the message names the variable."""


class Secret:
    """A webhook secret whose repr and str never show its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class FileSecret(Secret):
    """A secret named by a `…_FILE` variable: its file is read again each time it is revealed, so a
    rotated file (a mounted Secret) applies without a restart. reveal() raises OSError if it cannot be read."""

    __slots__ = ("_path",)

    def __init__(self, path: Path, value: str) -> None:
        super().__init__(value)
        self._path = path

    def reveal(self) -> str:
        return self._path.read_text(encoding="utf-8").strip()


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
DEDUPE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
TOKEN_PROVIDERS = ("aws-msk-iam",)


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    """How every Kafka client of the project authenticates and encrypts. Checked whole at startup: aiokafka
    itself connects without authentication when SASL options come without a SASL protocol."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    sasl_password_file: Path | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password_file: Path | None = None
    oauth_token_file: Path | None = None
    oauth_token_provider: str | None = None
    """`aws-msk-iam`: a SigV4-signed token for Amazon MSK IAM (the `msk` extra), in place of a token file."""
    aws_region: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"RELAY_KAFKA_SECURITY_PROTOCOL: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
            raise ConfigError(
                f"RELAY_KAFKA_SASL_MECHANISM: {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        self._check_unused()
        if self.sasl:
            self._check_sasl()
        if self.ssl_key_file is not None and self.ssl_cert_file is None:
            raise ConfigError(
                "RELAY_KAFKA_SSL_KEY_FILE: needs RELAY_KAFKA_SSL_CERT_FILE, the certificate it belongs to"
            )
        if self.ssl_key_password_file is not None and self.ssl_cert_file is None:
            raise ConfigError("RELAY_KAFKA_SSL_KEY_PASSWORD_FILE: needs RELAY_KAFKA_SSL_CERT_FILE")
        for variable, path in self.files():
            _readable(variable, path)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def _check_unused(self) -> None:
        """A setting the protocol would ignore is a mistake, never silently dropped."""
        sasl = {
            "RELAY_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "RELAY_KAFKA_SASL_USERNAME": self.sasl_username,
            "RELAY_KAFKA_SASL_PASSWORD": self.sasl_password,
            "RELAY_KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file,
            "RELAY_KAFKA_OAUTH_TOKEN_FILE": self.oauth_token_file,
            "RELAY_KAFKA_OAUTH_TOKEN_PROVIDER": self.oauth_token_provider,
            "RELAY_KAFKA_AWS_REGION": self.aws_region,
        }
        tls = {
            "RELAY_KAFKA_SSL_CA_FILE": self.ssl_ca_file,
            "RELAY_KAFKA_SSL_CERT_FILE": self.ssl_cert_file,
            "RELAY_KAFKA_SSL_KEY_FILE": self.ssl_key_file,
            "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
        }
        for group, used, wanted in (
            (sasl, self.sasl, "SASL_SSL or SASL_PLAINTEXT"),
            (tls, self.tls, "SSL or SASL_SSL"),
        ):
            unused = next((name for name, value in group.items() if value is not None), None)
            if unused is not None and not used:
                raise ConfigError(
                    f"{unused}: set, but RELAY_KAFKA_SECURITY_PROTOCOL is {self.protocol}, which would not use it"
                    f" (use {wanted})"
                )

    def _check_sasl(self) -> None:
        mechanism = self.sasl_mechanism
        if mechanism is None:
            raise ConfigError(f"RELAY_KAFKA_SASL_MECHANISM: required with {self.protocol} ({', '.join(MECHANISMS)})")
        if mechanism == "OAUTHBEARER":
            self._check_token_source()
            extra = self.sasl_username is not None or self.sasl_password is not None or self.sasl_password_file
            if extra:
                raise ConfigError(
                    "RELAY_KAFKA_SASL_USERNAME/PASSWORD: not used by OAUTHBEARER (the token names the user)"
                )
            return
        if self.oauth_token_file is not None or self.oauth_token_provider is not None:
            raise ConfigError(f"RELAY_KAFKA_OAUTH_TOKEN_FILE/_PROVIDER: only for OAUTHBEARER, not {mechanism}")
        if not self.sasl_username:
            raise ConfigError(f"RELAY_KAFKA_SASL_USERNAME: required with {mechanism}")
        if (self.sasl_password is None) == (self.sasl_password_file is None):
            raise ConfigError(
                f"RELAY_KAFKA_SASL_PASSWORD or RELAY_KAFKA_SASL_PASSWORD_FILE: exactly one is required with {mechanism}"
            )

    def _check_token_source(self) -> None:
        if (self.oauth_token_file is None) == (self.oauth_token_provider is None):
            raise ConfigError(
                "RELAY_KAFKA_OAUTH_TOKEN_FILE or RELAY_KAFKA_OAUTH_TOKEN_PROVIDER: exactly one is required with"
                " RELAY_KAFKA_SASL_MECHANISM=OAUTHBEARER"
            )
        if self.oauth_token_provider is None:
            if self.aws_region is not None:
                raise ConfigError("RELAY_KAFKA_AWS_REGION: only for RELAY_KAFKA_OAUTH_TOKEN_PROVIDER=aws-msk-iam")
            return
        if self.oauth_token_provider not in TOKEN_PROVIDERS:
            known = ", ".join(TOKEN_PROVIDERS)
            raise ConfigError(f"RELAY_KAFKA_OAUTH_TOKEN_PROVIDER: {self.oauth_token_provider!r} is not one of {known}")
        if not self.aws_region:
            raise ConfigError("RELAY_KAFKA_AWS_REGION: required with RELAY_KAFKA_OAUTH_TOKEN_PROVIDER=aws-msk-iam")
        if self.protocol != "SASL_SSL":
            raise ConfigError("RELAY_KAFKA_SECURITY_PROTOCOL: aws-msk-iam needs SASL_SSL (MSK's IAM listener is TLS)")

    def files(self) -> list[tuple[str, Path]]:
        """(variable, path) of every file these settings read: passwords, keys, certificates, the token."""
        files = {
            "RELAY_KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file,
            "RELAY_KAFKA_SSL_CA_FILE": self.ssl_ca_file,
            "RELAY_KAFKA_SSL_CERT_FILE": self.ssl_cert_file,
            "RELAY_KAFKA_SSL_KEY_FILE": self.ssl_key_file,
            "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
            "RELAY_KAFKA_OAUTH_TOKEN_FILE": self.oauth_token_file,
        }
        return [(variable, path) for variable, path in files.items() if path is not None]


@dataclass(frozen=True)
class SentinelUrl:
    """`redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def sentinel_url(url: str) -> SentinelUrl:
    """Raises ConfigError, naming RELAY_DEDUPE_URL, when `url` is not of that shape."""
    usage = "RELAY_DEDUPE_URL: redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]"
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    path = [segment for segment in parts.path.split("/") if segment]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(usage)
    sentinels = []
    for entry in hosts.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{usage}: {entry!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _readable(variable: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    secrets: tuple[Secret, ...] = ()
    sources_file: Path | None = None
    sources_poll_seconds: float = 1.0
    rotation_retry_after_seconds: int = 60
    parking_max_entries: int = 10_000
    parking_max_bytes: int = 64 * 1024 * 1024
    parking_max_per_source: int = 5_000
    parking_max_age_seconds: float = 86_400.0
    parking_rate_per_source: float = 20.0
    parking_burst: int = 200
    public_url: str | None = None
    """The relay's public base URL, as MyTPE calls it (`https://hooks.example.com`): register and drift."""
    mytpe_api_key: Secret | None = None
    mytpe_api_secret: Secret | None = None
    drift_check_seconds: float = 300.0
    mytpe_api_timeout_seconds: float = 10.0
    spool_dir: Path | None = None
    """A directory for the durable spool (SQLite); unset, there is no spool and nothing changes."""
    spool_after_seconds: float = 2.0
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_drain_seconds: float = 10.0
    spool_recovery_check: bool = False
    """At start, drop the spooled rows a killed process had sent that are already in Kafka (needs Read)."""
    kafka_bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    topic_prefix: str = "mytpe"
    topic_partitions: int = 6
    topic_replication_factor: int = 3
    topic_min_insync_replicas: int = 2
    host: str = "0.0.0.0"
    port: int = 8080
    replay_window_seconds: int = 300
    max_body_bytes: int = 262144
    dedupe_url: str = field(default="memory://", repr=False)  # may carry a Redis password
    dedupe_tls_ca_file: Path | None = None
    dedupe_tls_cert_file: Path | None = None
    dedupe_tls_key_file: Path | None = None
    dedupe_ttl_seconds: int = 259200
    dedupe_max_entries: int = 1_000_000
    dedupe_lease_seconds: float = 15.0
    dedupe_fail_open: bool = False
    families: tuple[str, ...] = ("transaction", "pay_link")
    routes: tuple[Route, ...] = ()
    publish_timeout_seconds: float = 10.0
    kafka_delivery_timeout_seconds: float = 120.0
    startup_timeout_seconds: float = 30.0
    inflight_wait_seconds: float = 5.0
    max_in_flight: int = 512
    body_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    shutdown_delay_seconds: float = 3.0
    shutdown_timeout_seconds: int = 15
    flush_timeout_seconds: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        self._check_sources()
        if not _PREFIX.match(self.topic_prefix):
            raise ConfigError("RELAY_TOPIC_PREFIX: letters, digits, '.', '_' and '-' only")
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ConfigError(
                "RELAY_TOPIC_MIN_INSYNC_REPLICAS: above RELAY_TOPIC_REPLICATION_FACTOR; no write could succeed"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"RELAY_PORT: {self.port} is not a TCP port")
        if not self.dedupe_url.startswith(DEDUPE_SCHEMES):
            raise ConfigError(
                "RELAY_DEDUPE_URL: memory://, redis://[user:password@]host:port/db, rediss://, unix://,"
                " or redis+sentinel://[user:password@]host:port[,host:port…]/master[/db] (rediss+sentinel:// for TLS)"
            )
        if "+sentinel://" in self.dedupe_url:
            sentinel_url(self.dedupe_url)  # its shape, checked at startup: a bad one fails here, by name
        self._check_dedupe_tls()
        if self.dedupe_lease_seconds <= self.publish_timeout_seconds:
            raise ConfigError("RELAY_DEDUPE_LEASE_SECONDS: must be longer than RELAY_PUBLISH_TIMEOUT_SECONDS")
        bad = [f for f in self.families if not FAMILY.fullmatch(f)]
        if bad:
            raise ConfigError(f"RELAY_FAMILIES: invalid family name {bad[0]!r}")
        if self.kafka_delivery_timeout_seconds < self.publish_timeout_seconds:
            raise ConfigError("RELAY_KAFKA_DELIVERY_TIMEOUT_SECONDS: must be at least RELAY_PUBLISH_TIMEOUT_SECONDS")
        if "dlq" in self.families:
            raise ConfigError("RELAY_FAMILIES: 'dlq' is reserved for the dead-letter topic")

    def _check_sources(self) -> None:
        if not self.secrets and self.sources_file is None:
            raise ConfigError(
                "RELAY_SOURCES_FILE or RELAY_MYTPE_SECRETS: set one (a sources file, or the secrets of /webhooks/mytpe)"
            )
        if self.sources_poll_seconds > 2:
            raise ConfigError("RELAY_SOURCES_POLL_SECONDS: at most 2 (a changed secret must verify within 5 s)")
        if self.parking_max_per_source > self.parking_max_entries:
            raise ConfigError("RELAY_PARKING_MAX_PER_SOURCE: above RELAY_PARKING_MAX_ENTRIES")
        if self.spool_dir is not None and self.spool_after_seconds >= self.publish_timeout_seconds:
            raise ConfigError("RELAY_SPOOL_AFTER_SECONDS: must be below RELAY_PUBLISH_TIMEOUT_SECONDS")

    def _check_dedupe_tls(self) -> None:
        files = {
            "RELAY_DEDUPE_TLS_CA_FILE": self.dedupe_tls_ca_file,
            "RELAY_DEDUPE_TLS_CERT_FILE": self.dedupe_tls_cert_file,
            "RELAY_DEDUPE_TLS_KEY_FILE": self.dedupe_tls_key_file,
        }
        given = {variable: path for variable, path in files.items() if path is not None}
        if given and not self.dedupe_url.startswith(("rediss://", "rediss+sentinel://")):
            raise ConfigError(f"{next(iter(given))}: set, but RELAY_DEDUPE_URL is not rediss:// (TLS)")
        if self.dedupe_tls_key_file is not None and self.dedupe_tls_cert_file is None:
            raise ConfigError("RELAY_DEDUPE_TLS_KEY_FILE: needs RELAY_DEDUPE_TLS_CERT_FILE, its certificate")
        for variable, path in given.items():
            _readable(variable, path)

    def router(self) -> Router:
        """`RELAY_FAMILIES` each to its own topic, then the `RELAY_ROUTES` entries."""
        return Router(self.topic_prefix, routes_for(self.families, self.routes))

    @property
    def stop_bound_seconds(self) -> float:
        """Longest time from SIGTERM to exit: readiness delay + drain + spool drain + producer flush + late acks."""
        spool = self.spool_drain_seconds + self.spool_after_seconds if self.spool_dir is not None else 0.0
        return self.shutdown_delay_seconds + self.shutdown_timeout_seconds + spool + self.flush_timeout_seconds + 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from `env`; keys of the file named by `RELAY_CONFIG_FILE` apply where env is silent."""
        return cls(**_fields(merged_env(env)))


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
        fields = _fields(merged_env(env))
        return cls(
            bootstrap_servers=fields.get("kafka_bootstrap_servers", Settings.kafka_bootstrap_servers),
            topic_prefix=fields.get("topic_prefix", Settings.topic_prefix),
            families=fields.get("families", Settings.families),
            routes=fields.get("routes", ()),
            security=fields.get("kafka_security", KafkaSecurity()),
        )

    def topics(self) -> list[str]:
        return Router(self.topic_prefix, routes_for(self.families, self.routes)).topics()


def merged_env(env: Mapping[str, str]) -> dict[str, str]:
    merged = read_env_file(Path(env["RELAY_CONFIG_FILE"])) if env.get("RELAY_CONFIG_FILE") else {}
    merged.update({k: v for k, v in env.items() if k.startswith("RELAY_")})
    return merged


class _Fields(TypedDict, total=False):
    secrets: tuple[Secret, ...]
    sources_file: Path
    sources_poll_seconds: float
    rotation_retry_after_seconds: int
    parking_max_entries: int
    parking_max_bytes: int
    parking_max_per_source: int
    parking_max_age_seconds: float
    parking_rate_per_source: float
    parking_burst: int
    public_url: str
    mytpe_api_key: Secret
    mytpe_api_secret: Secret
    drift_check_seconds: float
    mytpe_api_timeout_seconds: float
    spool_dir: Path
    spool_after_seconds: float
    spool_max_bytes: int
    spool_drain_seconds: float
    spool_recovery_check: bool
    kafka_bootstrap_servers: tuple[str, ...]
    kafka_security: KafkaSecurity
    topic_prefix: str
    topic_partitions: int
    topic_replication_factor: int
    topic_min_insync_replicas: int
    host: str
    port: int
    replay_window_seconds: int
    max_body_bytes: int
    dedupe_url: str
    dedupe_tls_ca_file: Path
    dedupe_tls_cert_file: Path
    dedupe_tls_key_file: Path
    dedupe_ttl_seconds: int
    dedupe_max_entries: int
    dedupe_lease_seconds: float
    dedupe_fail_open: bool
    families: tuple[str, ...]
    routes: tuple[Route, ...]
    publish_timeout_seconds: float
    kafka_delivery_timeout_seconds: float
    startup_timeout_seconds: float
    inflight_wait_seconds: float
    max_in_flight: int
    body_timeout_seconds: float
    header_timeout_seconds: float
    shutdown_delay_seconds: float
    shutdown_timeout_seconds: int
    flush_timeout_seconds: float
    log_level: str
    log_format: str


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _fields(env: Mapping[str, str]) -> _Fields:
    def get(name: str, parse: Callable[[str], T]) -> T | None:
        return _get(env, name, parse)

    raw_secrets = env.get("RELAY_MYTPE_SECRETS", "")
    values: dict[str, object | None] = {
        "secrets": tuple(Secret(s.strip()) for s in raw_secrets.split(",") if s.strip()),
        "sources_file": get("RELAY_SOURCES_FILE", Path),
        "sources_poll_seconds": get("RELAY_SOURCES_POLL_SECONDS", _positive_float),
        "rotation_retry_after_seconds": get("RELAY_ROTATION_RETRY_AFTER_SECONDS", _positive_int),
        "parking_max_entries": get("RELAY_PARKING_MAX_ENTRIES", _positive_int),
        "parking_max_bytes": get("RELAY_PARKING_MAX_BYTES", _positive_int),
        "parking_max_per_source": get("RELAY_PARKING_MAX_PER_SOURCE", _positive_int),
        "parking_max_age_seconds": get("RELAY_PARKING_MAX_AGE_SECONDS", _positive_float),
        "parking_rate_per_source": get("RELAY_PARKING_RATE_PER_SOURCE", _positive_float),
        "parking_burst": get("RELAY_PARKING_BURST", _positive_int),
        "public_url": get("RELAY_PUBLIC_URL", _public_url),
        "mytpe_api_key": _secret_value(env, "RELAY_MYTPE_API_KEY"),
        "mytpe_api_secret": _secret_value(env, "RELAY_MYTPE_API_SECRET"),
        "drift_check_seconds": get("RELAY_MYTPE_DRIFT_CHECK_SECONDS", _positive_float),
        "mytpe_api_timeout_seconds": get("RELAY_MYTPE_API_TIMEOUT_SECONDS", _positive_float),
        "spool_dir": get("RELAY_SPOOL_DIR", Path),
        "spool_after_seconds": get("RELAY_SPOOL_AFTER_SECONDS", _positive_float),
        "spool_max_bytes": get("RELAY_SPOOL_MAX_BYTES", _positive_int),
        "spool_drain_seconds": get("RELAY_SPOOL_DRAIN_SECONDS", _non_negative_float),
        "spool_recovery_check": get("RELAY_SPOOL_RECOVERY_CHECK", _boolean),
        "kafka_bootstrap_servers": get("RELAY_KAFKA_BOOTSTRAP_SERVERS", _servers),
        "kafka_security": _kafka_security(env),
        "topic_prefix": get("RELAY_TOPIC_PREFIX", str),
        "topic_partitions": get("RELAY_TOPIC_PARTITIONS", _positive_int),
        "topic_replication_factor": get("RELAY_TOPIC_REPLICATION_FACTOR", _positive_int),
        "topic_min_insync_replicas": get("RELAY_TOPIC_MIN_INSYNC_REPLICAS", _positive_int),
        "host": get("RELAY_HOST", str),
        "port": get("RELAY_PORT", _positive_int),
        "replay_window_seconds": get("RELAY_REPLAY_WINDOW_SECONDS", _positive_int),
        "max_body_bytes": get("RELAY_MAX_BODY_BYTES", _positive_int),
        "dedupe_url": get("RELAY_DEDUPE_URL", str),
        "dedupe_tls_ca_file": get("RELAY_DEDUPE_TLS_CA_FILE", Path),
        "dedupe_tls_cert_file": get("RELAY_DEDUPE_TLS_CERT_FILE", Path),
        "dedupe_tls_key_file": get("RELAY_DEDUPE_TLS_KEY_FILE", Path),
        "dedupe_ttl_seconds": get("RELAY_DEDUPE_TTL_SECONDS", _positive_int),
        "dedupe_max_entries": get("RELAY_DEDUPE_MAX_ENTRIES", _positive_int),
        "dedupe_lease_seconds": get("RELAY_DEDUPE_LEASE_SECONDS", _positive_float),
        "dedupe_fail_open": get("RELAY_DEDUPE_FAIL_OPEN", _boolean),
        "families": get("RELAY_FAMILIES", _names),
        "routes": get("RELAY_ROUTES", _routes),
        "publish_timeout_seconds": get("RELAY_PUBLISH_TIMEOUT_SECONDS", _positive_float),
        "kafka_delivery_timeout_seconds": get("RELAY_KAFKA_DELIVERY_TIMEOUT_SECONDS", _positive_float),
        "startup_timeout_seconds": get("RELAY_STARTUP_TIMEOUT_SECONDS", _positive_float),
        "inflight_wait_seconds": get("RELAY_INFLIGHT_WAIT_SECONDS", _positive_float),
        "max_in_flight": get("RELAY_MAX_IN_FLIGHT", _positive_int),
        "body_timeout_seconds": get("RELAY_BODY_TIMEOUT_SECONDS", _positive_float),
        "header_timeout_seconds": get("RELAY_HEADER_TIMEOUT_SECONDS", _positive_float),
        "shutdown_delay_seconds": get("RELAY_SHUTDOWN_DELAY_SECONDS", _non_negative_float),
        "shutdown_timeout_seconds": get("RELAY_SHUTDOWN_TIMEOUT_SECONDS", _positive_int),
        "flush_timeout_seconds": get("RELAY_FLUSH_TIMEOUT_SECONDS", _positive_float),
        "log_level": get("RELAY_LOG_LEVEL", _log_level),
        "log_format": get("RELAY_LOG_FORMAT", _log_format),
    }
    return cast(_Fields, {k: v for k, v in values.items() if v is not None})


def _kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    password = env.get("RELAY_KAFKA_SASL_PASSWORD")
    return KafkaSecurity(
        protocol=_get(env, "RELAY_KAFKA_SECURITY_PROTOCOL", str.upper) or "PLAINTEXT",
        sasl_mechanism=_get(env, "RELAY_KAFKA_SASL_MECHANISM", str.upper),
        sasl_username=_get(env, "RELAY_KAFKA_SASL_USERNAME", str),
        sasl_password=Secret(password) if password else None,  # as given: a password may have spaces
        sasl_password_file=_get(env, "RELAY_KAFKA_SASL_PASSWORD_FILE", Path),
        ssl_ca_file=_get(env, "RELAY_KAFKA_SSL_CA_FILE", Path),
        ssl_cert_file=_get(env, "RELAY_KAFKA_SSL_CERT_FILE", Path),
        ssl_key_file=_get(env, "RELAY_KAFKA_SSL_KEY_FILE", Path),
        ssl_key_password_file=_get(env, "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE", Path),
        oauth_token_file=_get(env, "RELAY_KAFKA_OAUTH_TOKEN_FILE", Path),
        oauth_token_provider=_get(env, "RELAY_KAFKA_OAUTH_TOKEN_PROVIDER", str.lower),
        aws_region=_get(env, "RELAY_KAFKA_AWS_REGION", str),
    )


def _public_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{raw!r} is not a base URL like https://hooks.example.com")
    return raw.rstrip("/")


def _secret_value(env: Mapping[str, str], name: str) -> Secret | None:
    """`NAME`, or the content of the file `NAME_FILE` (stripped, read again when used), never both."""
    value, file = env.get(name), env.get(f"{name}_FILE")
    if value and file:
        raise ConfigError(f"{name}: set it or {name}_FILE, not both")
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file}: {exc.strerror}") from None
        except UnicodeError:
            raise ConfigError(f"{name}_FILE: {file} is not UTF-8 text") from None
        return FileSecret(Path(file), value) if value else None
    return Secret(value) if value else None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{raw!r} must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{raw!r} must be zero or a positive number")
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(f"{raw!r} is not true or false")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _routes(raw: str) -> tuple[Route, ...]:
    routes = tuple(parse_route(entry) for entry in _names(raw))
    families = [route.family for route in routes]
    repeated = next((f for f in families if families.count(f) > 1), None)
    if repeated:
        raise ValueError(f"family {repeated!r} is routed twice")
    return routes


def _servers(raw: str) -> tuple[str, ...]:
    servers = _names(raw)
    bad = [s for s in servers if not _HOSTPORT.match(s)]
    if bad or not servers:
        raise ValueError(f"expected comma-separated host:port, got {raw!r}")
    return servers


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"{raw!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


def _log_format(raw: str) -> str:
    fmt = raw.lower()
    if fmt not in FORMATS:
        raise ValueError(f"{raw!r} is not one of {', '.join(FORMATS)}")
    return fmt


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `KEY=VALUE` lines; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"RELAY_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"RELAY_CONFIG_FILE: {path}:{number}: expected KEY=VALUE")
        result[key.strip()] = value.strip()
    return result
