"""The dedupe store's URL: its schemes, and a Sentinel URL taken apart."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis

from relay.settings.parsers import MAX_PORT
from relay.settings.values import ConfigError

DEDUPE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
STORE_TIMEOUT_SECONDS = 2.0
"""A Redis client's connect and read timeout (the dedupe store's, parking's), unless the URL sets its own."""
STORE_CLEANUP_SECONDS = 2 * STORE_TIMEOUT_SECONDS
"""How long the drain waits, once it gave up on late acknowledgements, for their last store operations: the
extension in flight and the release or commit behind it (one batch at a time), two round trips. Past it it
stops waiting for them (relay.pipeline.late_acks)."""
STORE_STOP_SECONDS = STORE_CLEANUP_SECONDS + 2 * STORE_TIMEOUT_SECONDS
"""What Redis dedupe adds to the relay's time from SIGTERM to exit: that wait, and closing the parking lot's
clients and the dedupe store's, each close bounded by the timeout (relay.dedupe.connect)."""


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
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:  # urlsplit's message quotes the host part, password included
        raise ConfigError(f"{usage}: not a URL this reads (a '[' or ']' outside an IPv6 address?)") from None
    hosts = parts.netloc.rpartition("@")[2]
    path = [segment for segment in parts.path.split("/") if segment]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not _ascii_digits(path[1])):
        raise ConfigError(usage)
    sentinels = []
    for entry in hosts.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not _ascii_digits(port) or not 0 < int(port) <= MAX_PORT:
            raise ConfigError(f"{usage}: {entry!r} is not host:port (a port from 1 to {MAX_PORT})")
        sentinels.append((host.strip("[]"), int(port)))
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) if username else None,
        password=unquote(password) if password else None,
    )


def _ascii_digits(text: str) -> bool:
    """Digits 0 to 9 only (`str.isdigit` takes `²` too, which `int` refuses)."""
    return bool(text) and text.isascii() and text.isdigit()


def redis_url(url: str) -> None:
    """Raises ConfigError, naming RELAY_DEDUPE_URL, for a redis://, rediss:// or unix:// URL the store could
    not use as the relay means it, found when it connected before (after Kafka, as a traceback):
    - a URL redis-py cannot read, or a query it refuses: a value it cannot read, an option it does not know;
    - an option it takes that the relay does not (`TAKEN`), or a value no connection can use (`_out_of_range`);
    - an option the relay decides itself (`owned`): the replies' decoding, and TLS's (every `ssl*` option but
      the key's password), whose trust and checks the URL must not loosen (RELAY_DEDUPE_TLS_* name the files);
    - a `max_connections` below 2: a batch in flight holds one connection, and readiness's ping needs
      another (with one, /readyz failed while a batch was out).
    No I/O: redis-py builds a connection object, and does not open it. Never echoes the URL: redis-py's
    message is shown only when it is one of the shapes that name an option (`_SAID`)."""
    try:  # the URL's own shape first: urlsplit's messages quote the host part, password included
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here, quoting it
        given = set(parse_qs(parts.query, keep_blank_values=True))
        names = sorted(name for name in given if owned(name))
    except ValueError as exc:
        raise ConfigError(f"RELAY_DEDUPE_URL: {_unreadable(exc)}") from None
    if parts.scheme != "unix" and not parts.hostname:  # `redis://:2024/x@host`: a password's '/' not encoded
        raise ConfigError(
            "RELAY_DEDUPE_URL: no host: name one (redis://[:password@]host:port/db); a '/', '?' or '#' in the"
            " password must be %-encoded"
        )
    if names:
        why = " (RELAY_DEDUPE_TLS_* name the files; the certificate and hostname are always checked)"
        why = why if names[0].startswith("ssl") else ""
        raise ConfigError(f"RELAY_DEDUPE_URL: {names[0]!r} in its query: the relay decides it{why}")
    try:
        pool = Redis.from_url(url).connection_pool
        pool.make_connection()  # type: ignore[no-untyped-call]  # an option it does not take fails here
    except Exception as exc:  # whatever redis-py raises for a URL it cannot use: one line, never a traceback
        raise ConfigError(f"RELAY_DEDUPE_URL: {_said(exc)}") from None
    if why := _not_taken(given) or _out_of_range(given, pool.connection_kwargs):
        raise ConfigError(f"RELAY_DEDUPE_URL: {why}")
    if pool.max_connections < 2:
        raise ConfigError(
            f"RELAY_DEDUPE_URL: max_connections={pool.max_connections}: the store needs at least 2 (a batch of"
            " operations in flight holds one, readiness's ping another)"
        )


TAKEN = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_read_size",
        "retry_on_timeout",
        "health_check_interval",
        "max_connections",
        "protocol",
        "client_name",
        "username",
        "password",
        "ssl_password",
    }
)
"""The query options the relay takes: those of redis-py's that a URL gives as text it can use. redis-py takes
others, but as Python objects (`retry_on_error`, `redis_connect_func`: from a URL, text, which failed when
Redis did: a ping raised TypeError instead of answering False), or that belong in the URL's own parts
(`host`, `port`), or that it deprecates (`lib_name`, `lib_version`)."""
_POSITIVE = ("socket_timeout", "socket_connect_timeout", "socket_read_size")
_NOT_NEGATIVE = ("db", "health_check_interval")


def _not_taken(given: set[str]) -> str:
    """The refusal of the first option given that the relay does not take, or ''. Named when it reads as a name
    (redis-py skips an option given no value, so any text reaches here): never echoed raw."""
    name = min(given - TAKEN, default=None)
    if name is None:
        return ""
    shown = repr(name) if name.isidentifier() and name.isascii() and len(name) <= 40 else "an option"
    return f"{shown} in its query: not an option the relay takes"


def _out_of_range(given: set[str], options: dict[str, object]) -> str:
    """The refusal of the first value redis-py read (`options`, as it will use them) that no connection can use,
    or '': a timeout of 0, below it or not finite (every call timed out at once, or never), a negative db."""
    for names, least, above in ((_POSITIVE, "above 0", True), (_NOT_NEGATIVE, "0 or above", False)):
        for name in sorted(given.intersection(names)):
            value = options.get(name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or (above and not value):
                return f"{name!r} in its query must be a finite number{' ' if above else ', '}{least}"
    return ""


def owned(name: str) -> bool:
    """A query option of a Redis URL the relay refuses: it sets it (relay.dedupe.connect), or it would change
    what the relay decides (TLS's trust and checks: every `ssl*` option but the client key's password; the
    replies' decoding), and redis-py lets the URL's win."""
    if name.startswith("ssl"):
        return name != "ssl_password"  # an encrypted RELAY_DEDUPE_TLS_KEY_FILE's: it loosens nothing
    return name in {"decode_responses", "encoding", "encoding_errors", "legacy_responses"}


_SAID = re.compile(
    r"Invalid value for '(?P<value>\w+)' in connection URL"
    r"|unexpected keyword argument '(?P<unknown>\w+)'"
    r'|"(?P<range>\w+)" must be a positive integer'
)


def _unreadable(exc: Exception) -> str:
    """The URL's shape refused, never quoted (the parser's message quotes the host part, password included)."""
    return (
        f"not a URL the relay can read ({type(exc).__name__}): a port that is not a number from 0 to 65535, or a"
        " character of the user or password to percent-encode ('/', '?', '#', '@', '[', non-ASCII)"
    )


def _said(exc: Exception) -> str:
    """redis-py's refusal of a URL whose shape was read (`_unreadable` else), in the relay's words: the option
    it names, else its type only."""
    found = _SAID.search(str(exc))
    if found is None:
        return f"redis-py cannot use it ({type(exc).__name__}): an option or a value in its query"
    if found["unknown"]:
        return f"redis-py has no option {found['unknown']!r} (in its query)"
    return f"the value of {found['value'] or found['range']!r} in its query is not one redis-py takes"
