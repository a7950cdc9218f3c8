"""The Redis client `RELAY_DEDUPE_URL` names: a server (redis://, rediss://, unix://) or a Sentinel-managed
master (redis+sentinel://, rediss+sentinel://), with ACL users in the URL and TLS files from the settings.

Sentinel URLs: `redis+sentinel://[user:password@]host:port[,host:port…]/master-name[/db]`. The user and
password authenticate to the master and its replicas; the sentinels are asked without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import MovedError, ReadOnlyError

from relay.settings import STORE_TIMEOUT_SECONDS, sentinel_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RedisTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def options(self) -> dict[str, Any]:
        """redis-py's TLS options: the CA (unset: the system store), an optional client certificate, and
        the hostname check on."""
        return {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": _str(self.ca_file),
            "ssl_certfile": _str(self.cert_file),
            "ssl_keyfile": _str(self.key_file or self.cert_file),
        }


@dataclass(frozen=True)
class RedisConnection:
    """The client for the store's commands, and every other client it opened (a Sentinel's), closed together."""

    client: Redis
    others: tuple[Redis, ...] = ()

    async def aclose(self) -> None:
        """Close every client at once, within STORE_TIMEOUT_SECONDS in all (redis-py bounds each connection's
        close by the connect timeout, which a URL may lengthen; asyncio a TLS close by 30 s). Never raises: a
        server that does not answer the close (a TLS close_notify that never comes) is said in one line, and
        not waited for (asyncio ends such a TLS close on its own, within those 30 s)."""
        clients = (self.client, *self.others)
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                closed = await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
        except TimeoutError as exc:
            closed = [exc]
        failed = next((result for result in closed if isinstance(result, BaseException)), None)
        if failed is not None:
            logger.warning("redis: a connection did not close cleanly (%s); not waited for", type(failed).__name__)


def redis_connection(url: str, *, tls: RedisTls, timeout: float, decode: bool = True) -> RedisConnection:
    """The connection for `url`; it connects on first use. `decode=False` answers bytes (raw bodies)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": decode,
    }
    scheme = url.split("://", 1)[0]
    if scheme.endswith("+sentinel"):
        return _sentinel_master(url, tls=tls, common=common)
    if scheme == "rediss":
        tls_options = tls.options()
        tls_options.pop("ssl")  # the scheme says it
        return RedisConnection(Redis.from_url(url, **common, **tls_options))
    return RedisConnection(Redis.from_url(url, **common))


def _sentinel_master(url: str, *, tls: RedisTls, common: dict[str, Any]) -> RedisConnection:
    parsed = sentinel_url(url)  # Settings checked its shape at startup
    secured = tls.options() if url.startswith("rediss+") else {}
    master = {**common, **secured, "username": parsed.username, "password": parsed.password, "db": parsed.db}
    asked = {key: value for key, value in {**common, **secured}.items() if key != "decode_responses"}
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=asked, **master)  # type: ignore[no-untyped-call]
    client: Redis = manager.master_for(parsed.master, redis_class=Redis)
    return RedisConnection(client, tuple(manager.sentinels))  # the manager's own clients, one per sentinel


DEMOTED = (ReadOnlyError, MovedError)
"""A node demoted while this client stayed connected: READONLY from a replica, MOVED from a cluster-mode node
whose slots moved (a managed single-shard Redis's failover). The pooled connections go (`forget_connections`)."""


async def forget_connections(client: Redis) -> None:
    """After READONLY or MOVED (`DEMOTED`): the server was demoted while this client stayed connected (a managed
    Redis's primary endpoint, or a Service, now names the new master). Close the client's pooled connections, so
    that its next command connects to the address again, as redis-py's Sentinel client does; kept, they answered
    READONLY (or MOVED) for as long as the process ran. Bounded by STORE_TIMEOUT_SECONDS; a close that fails is
    left to the pool."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
            await client.connection_pool.disconnect(inuse_connections=True)


def where(url: str) -> str:
    """The URL's scheme and hosts, for `check` and logs: never the user, the password or the path."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
