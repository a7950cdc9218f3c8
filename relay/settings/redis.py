"""The dedupe store's URL: its schemes, and a Sentinel URL taken apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis

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


def redis_url(url: str) -> None:
    """Raises ConfigError, naming RELAY_DEDUPE_URL, for a redis://, rediss:// or unix:// URL whose query
    redis-py would refuse only when the store connects (a value that is not a number, an option it does
    not know), or whose `max_connections` is below 2: a batch in flight holds one connection, and
    readiness's ping needs another (with one, /readyz failed while a batch was out). No I/O: redis-py
    builds a connection object, and does not open it."""
    try:
        pool = Redis.from_url(url).connection_pool
        # an option redis-py's connection does not take fails here, by its name
        pool.make_connection()  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:  # its messages name the option, never the URL's password
        raise ConfigError(f"RELAY_DEDUPE_URL: {exc}") from None
    if pool.max_connections < 2:
        raise ConfigError(
            f"RELAY_DEDUPE_URL: max_connections={pool.max_connections}: the store needs at least 2 (a batch of"
            " operations in flight holds one, readiness's ping another)"
        )
