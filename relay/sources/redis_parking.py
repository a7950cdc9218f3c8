"""Parking on Redis, shared by every replica: a request parked by one is verified again by whichever
replica sees its source's secrets change first (the others find it gone, or get `duplicate` from dedupe).

Keys, under the dedupe store's namespace (so the same ACL key pattern covers them) and one hash tag,
so each script touches one Redis Cluster slot:
    NS:{parked}:src:SOURCE    sorted set: entry id -> receive time (oldest first)
    NS:{parked}:data:SOURCE   hash: entry id -> one JSON line of headers, a newline, the raw body
    NS:{parked}:tries:SOURCE  hash: entry id -> its attempts' signatures, "timestamp,digest,received_at;..."
    NS:{parked}:size:SOURCE   sorted set: entry id -> its size class x 1e11 - its receive time (past the bytes
                              bound, the oldest of the largest class makes room: parking.size_class)
    NS:{parked}:count, :bytes the totals the bounds are checked against, kept by the scripts
    NS:{parked}:counts, :weights  sorted sets: source -> its entries, its bytes (who makes room)
    NS:{parked}:sources       the sources that ever parked, for expiry

The bounds and the eviction order are the memory lot's (parking.py), applied inside one script;
among sources holding as many entries (or bytes), which one makes room may differ. An entry the
size: key does not name (parked before it existed, or the key lost to an eviction by Redis) has
the key rebuilt from the source's entries before the next choice by size. The scripts reach
keys they do not declare (src:, data:, tries: of any source) by name: same hash tag, same slot, so
Redis and Redis Cluster run them, but a server or proxy that insists on declared keys (Dragonfly by
default, some cluster proxies) refuses them. Entries' receive times are each replica's wall clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.dedupe.connect import DEMOTED, RedisConnection, RedisTls, forget_connections, redis_connection
from relay.settings import STORE_TIMEOUT_SECONDS
from relay.sources.parked_format import attempt_text, decode, encode, entry_id, key_id
from relay.sources.parking import ATTEMPTS, ENTRY_OVERHEAD, Key, Limits, Parked, Usage
from relay.sources.parking_scripts import PARK, REMOVE, REPAIR

logger = logging.getLogger(__name__)

_BATCH = 500


class RedisParkingLot:
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        limits: Limits,
        tls: RedisTls | None = None,
        timeout: float = STORE_TIMEOUT_SECONDS,
    ) -> None:
        self.limits = limits
        self._url = url
        self._tls = tls or RedisTls()
        self._timeout = timeout
        self._base = f"{namespace}:{{parked}}"
        self._connection: RedisConnection | None = None
        self._evicted: dict[str, int] = {}
        self._slots = asyncio.Semaphore(1)  # sized by start, from the pool

    def _keys(self, source: str) -> list[str]:
        base = self._base
        return [f"{base}:src:{source}", f"{base}:data:{source}"]

    def _totals(self) -> list[str]:
        base = self._base
        return [f"{base}:count", f"{base}:bytes", f"{base}:counts", f"{base}:weights", f"{base}:sources"]

    def _redis(self) -> Redis:
        if self._connection is None:
            raise RedisError("the parking store is stopped")
        return self._connection.client

    async def start(self) -> None:
        self._connection = redis_connection(self._url, tls=self._tls, timeout=self._timeout, decode=False)
        # Each park holds a connection of redis-py's pool, which refuses one beyond its max_connections (100
        # by default) at once: parks wait for a slot instead, one connection left for the attendant's passes
        # (this lot's only other user, one call at a time).
        room = self._connection.client.connection_pool.max_connections
        self._slots = asyncio.Semaphore(max(room - 1, 1))

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()

    async def park(self, entry: Parked) -> str | None:
        limits = self.limits
        try:
            async with asyncio.timeout(self._timeout):  # no slot within it: refused, and nothing was sent
                await self._slots.acquire()
        except TimeoutError:
            return "error"
        try:
            async with asyncio.timeout(self._timeout):  # the call's own: past it, it may have run (as before)
                answer = await self._written(
                    self._redis().eval(
                        PARK,
                        5,
                        *self._totals(),
                        self._base,
                        ENTRY_OVERHEAD,
                        entry.source,
                        entry_id(entry),
                        repr(entry.received_at),
                        encode(entry),
                        limits.max_per_source,
                        limits.max_entries,
                        limits.max_bytes,
                        attempt_text(entry),
                        f"{entry.timestamp_text},{entry.digest.hex()},",
                        ATTEMPTS,
                    )
                )
        except (RedisError, OSError, TimeoutError):
            return "error"
        finally:
            self._slots.release()
        words = [word.decode() if isinstance(word, bytes) else str(word) for word in answer]
        for victim in words[1:]:
            self._evicted[victim] = self._evicted.get(victim, 0) + 1
        return None if words[0] == "parked" else words[0]

    def evicted(self) -> dict[str, int]:
        evicted, self._evicted = self._evicted, {}
        return evicted

    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]:
        """Each attempt of each entry, oldest entry first; `only`: of those entries, read alone and in its order
        (an entry gone meanwhile is not there)."""
        zset, data = self._keys(source)
        tries_key = f"{self._base}:tries:{source}"
        if only is None:
            ids: list[bytes] = cast(list[bytes], await self._redis().zrange(zset, 0, -1))
        else:
            ids = [key_id(key).encode() for key in only]
        found: list[Parked] = []
        unreadable = 0
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            payloads = cast(list[bytes | None], await self._redis().hmget(data, batch))
            tries = cast(list[bytes | None], await self._redis().hmget(tries_key, batch))
            for payload, held in zip(payloads, tries, strict=True):
                if payload is None:
                    continue
                try:
                    found.extend(decode(payload, held or b""))
                except (ValueError, KeyError, TypeError):  # written by another version, or by hand: left to expire
                    unreadable += 1
        if unreadable:
            logger.warning("parking: %d entry(ies) of source %s cannot be read; left to expire", unreadable, source)
        return found

    async def _remove(self, source: str, ids: list[bytes] | list[str]) -> tuple[int, int]:
        removed, dropped = await self._written(
            self._redis().eval(REMOVE, 5, *self._totals(), self._base, ENTRY_OVERHEAD, source, *ids)
        )
        return int(removed), int(dropped)

    async def _written(self, call: Awaitable[Any]) -> Any:
        """A script that writes. READONLY or MOVED: the server was demoted, and the connections go
        (`forget_connections`), so that the next call finds the new master once the URL's address names it; the
        error is raised."""
        try:
            return await call
        except DEMOTED:
            if self._connection is not None:
                await forget_connections(self._connection.client)
            raise

    async def remove(self, entry: Parked) -> None:
        await self._remove(entry.source, [entry_id(entry)])

    async def expire(self, now: float) -> dict[str, int]:
        """Drop entries older than `max_age_seconds`; first count the totals again if they drifted."""
        if await self._written(self._redis().eval(REPAIR, 5, *self._totals(), self._base, ENTRY_OVERHEAD)):
            logger.warning("parking totals on Redis disagreed with its entries (a key evicted?): counted again")
        horizon = now - self.limits.max_age_seconds
        expired: dict[str, int] = {}
        for raw in await self._redis().smembers(self._base + ":sources"):
            source = raw.decode() if isinstance(raw, bytes) else str(raw)
            zset = self._keys(source)[0]
            while True:
                ids = cast(list[bytes], await self._redis().zrangebyscore(zset, "-inf", horizon, start=0, num=_BATCH))
                if not ids:
                    break
                removed, dropped = await self._remove(source, ids)
                expired[source] = expired.get(source, 0) + removed
                if not dropped:  # nothing left the sorted set: the next read would be the same
                    break
        return {source: count for source, count in expired.items() if count}

    async def usage(self) -> Usage:
        redis = self._redis()
        count, size = await redis.mget(self._base + ":count", self._base + ":bytes")
        oldest: float | None = None
        for raw in await redis.smembers(self._base + ":sources"):
            source = raw.decode() if isinstance(raw, bytes) else str(raw)
            first = cast(list[tuple[bytes, float]], await redis.zrange(self._keys(source)[0], 0, 0, withscores=True))
            if first and (oldest is None or first[0][1] < oldest):
                oldest = float(first[0][1])
        return Usage(int(count or 0), int(size or 0), oldest)
