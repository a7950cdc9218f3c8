"""From a variable's text to a value: each parser raises ValueError with the reason, and says in `KINDS`
what it takes (the "values" column of docs/configuration.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from relay.logs import FORMATS
from relay.routing import Route, parse_route
from relay.settings.values import ConfigError, FileSecret, Secret

_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive integer")
    return value


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{raw!r} must be a positive number")
    return value


MAX_PORT = 65535
KAFKA_MAX_SECONDS = 2_147_483
"""The most seconds a Kafka wait sent as milliseconds in a 32-bit field may be (Java's 'infinite', 2^31 - 1 ms)."""


def kafka_seconds(raw: str) -> float:
    """A positive number of seconds, at most KAFKA_MAX_SECONDS: the producer sends it in each request as a
    32-bit count of milliseconds, and one past it failed every batch in aiokafka's sender (a traceback)."""
    value = positive_float(raw)
    if value > KAFKA_MAX_SECONDS:
        raise ValueError(f"{raw!r} is past {KAFKA_MAX_SECONDS:,} seconds (2^31 - 1 ms: Kafka's 32-bit timeout)")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{raw!r} must be zero or a positive number")
    return value


def boolean(raw: str) -> bool:
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(f"{raw!r} is not true or false")


def names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def routes(raw: str) -> tuple[Route, ...]:
    parsed = tuple(parse_route(entry) for entry in names(raw))
    families = [route.family for route in parsed]
    repeated = next((f for f in families if families.count(f) > 1), None)
    if repeated:
        raise ValueError(f"family {repeated!r} is routed twice")
    return parsed


def shown_routes(parsed: tuple[Route, ...]) -> str:
    """The routes as `RELAY_ROUTES` is written: `payment_link=pay_link,trader=kyc@trader.ref`."""
    return ",".join(route.spec() for route in parsed)


def servers(raw: str) -> tuple[str, ...]:
    found = names(raw)
    bad = [s for s in found if not _HOSTPORT.match(s) or not 0 < int(s.rpartition(":")[2]) <= MAX_PORT]
    if bad or not found:
        raise ValueError(f"expected comma-separated host:port, got {raw!r}")
    return found


def log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def log_format(raw: str) -> str:
    fmt = raw.lower()
    if fmt not in FORMATS:
        raise ValueError(f"{raw!r} is not one of {', '.join(FORMATS)}")
    return fmt


def public_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{shown_url(raw)!r} is not a base URL like https://hooks.example.com (no query, no fragment)")
    return raw.rstrip("/")


def shown_url(url: str) -> str:
    """`url` as it may be shown (check's report, an error): its password as `***`, no query, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    user, at, host = parts.netloc.rpartition("@")
    if parts.password is not None:
        user = f"{user.partition(':')[0]}:***"
    return urlunsplit((parts.scheme, f"{user}{at}{host}", parts.path, "", ""))


def secrets(raw: str) -> tuple[Secret, ...]:
    return tuple(Secret(s.strip()) for s in raw.split(",") if s.strip())


def secret_as_given(env: Mapping[str, str], name: str) -> Secret | None:
    """`name` exactly as given, unstripped: a password may have spaces."""
    value = env.get(name)
    return Secret(value) if value else None


def secret_or_file(env: Mapping[str, str], name: str) -> Secret | None:
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


KINDS: dict[Callable[..., object], str] = {
    positive_int: "integer > 0",
    positive_float: "number > 0",
    kafka_seconds: "number > 0, at most 2,147,483",
    non_negative_float: "number ≥ 0",
    boolean: "`true` or `false`",
    names: "names, comma-separated",
    routes: "`family=topic[@key.path]`, comma-separated",
    servers: "`host:port`, comma-separated",
    log_level: ", ".join(f"`{level}`" for level in LOG_LEVELS),
    log_format: ", ".join(f"`{fmt}`" for fmt in FORMATS),
    public_url: "`https://host[:port][/path]`",
    secrets: "`whsec_…`, comma-separated",
    secret_as_given: "text, as given",
    secret_or_file: "text, or a file",
    Path: "a path",
    str: "text",
}
