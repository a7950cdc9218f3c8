"""Parking on Redis, shared by every replica: a request parked by one is verified again by whichever
replica sees its source's secrets change first (the others find it gone, or get `duplicate` from dedupe).

Keys, under the dedupe store's namespace (so the same ACL key pattern covers them) and one hash tag,
so each script touches one Redis Cluster slot:
    NS:{parked}:src:SOURCE    sorted set: entry id -> receive time (oldest first)
    NS:{parked}:data:SOURCE   hash: entry id -> one JSON line of headers, a newline, the raw body
    NS:{parked}:count, :bytes the totals the bounds are checked against, kept by the scripts
    NS:{parked}:sources       the sources that ever parked, for expiry

The rate limit stays per replica (RateGate): a refused forgery costs no Redis round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.dedupe.connect import RedisConnection, RedisTls, redis_connection
from relay.sources.parking import Limits, Parked, RateGate, Usage

_PARK = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'parked' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 'source_full' end
local size = string.len(ARGV[3])
local count = tonumber(redis.call('GET', KEYS[3]) or '0')
local bytes = tonumber(redis.call('GET', KEYS[4]) or '0')
if count >= tonumber(ARGV[5]) or bytes + size > tonumber(ARGV[6]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('INCRBY', KEYS[4], size)
redis.call('SADD', KEYS[5], ARGV[7])
return 'parked'
"""
_REMOVE = """
local removed, dropped = 0, 0
for i = 1, #ARGV do
  local payload = redis.call('HGET', KEYS[2], ARGV[i])
  if payload then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('DECRBY', KEYS[4], string.len(payload))
    removed = removed + 1
  end
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    dropped = dropped + 1
    if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
  end
end
return {removed, dropped}
"""
"""Removes ids from both the sorted set and the hash. A member whose payload is gone (an `allkeys-*`
eviction, a manual HDEL) is removed too, and counted once out of the entries; the bytes it held are
unknown and stay counted. Answers {removed with a payload, removed from the sorted set}."""
_BATCH = 500


class RedisParkingLot:
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        limits: Limits,
        tls: RedisTls | None = None,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._url = url
        self._tls = tls or RedisTls()
        self._timeout = timeout
        self._gate = RateGate(limits, clock)
        self._base = f"{namespace}:{{parked}}"
        self._connection: RedisConnection | None = None

    def _keys(self, source: str) -> list[str]:
        base = self._base
        return [f"{base}:src:{source}", f"{base}:data:{source}", f"{base}:count", f"{base}:bytes", f"{base}:sources"]

    def _redis(self) -> Redis:
        if self._connection is None:
            raise RedisError("the parking store is stopped")
        return self._connection.client

    async def start(self) -> None:
        self._connection = redis_connection(self._url, tls=self._tls, timeout=self._timeout, decode=False)

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()

    async def park(self, entry: Parked) -> str | None:
        if not self._gate.admit(entry.source):
            return "rate_limited"
        limits = self.limits
        try:
            answer = await asyncio.wait_for(
                self._redis().eval(
                    _PARK,
                    5,
                    *self._keys(entry.source),
                    _id(entry),
                    repr(entry.received_at),
                    _encode(entry),
                    limits.max_per_source,
                    limits.max_entries,
                    limits.max_bytes,
                    entry.source,
                ),
                self._timeout,
            )
        except (RedisError, OSError, TimeoutError):
            return "error"
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return None if text == "parked" else text

    async def entries(self, source: str) -> list[Parked]:
        keys = self._keys(source)
        ids: list[bytes] = cast(list[bytes], await self._redis().zrange(keys[0], 0, -1))
        found: list[Parked] = []
        for start in range(0, len(ids), _BATCH):
            payloads = cast(list[bytes | None], await self._redis().hmget(keys[1], ids[start : start + _BATCH]))
            found.extend(_decode(p) for p in payloads if p is not None)
        return found

    async def remove(self, entry: Parked) -> None:
        await self._redis().eval(_REMOVE, 4, *self._keys(entry.source)[:4], _id(entry))

    async def expire(self, now: float) -> dict[str, int]:
        horizon = now - self.limits.max_age_seconds
        expired: dict[str, int] = {}
        for raw in await self._redis().smembers(self._base + ":sources"):
            source = raw.decode() if isinstance(raw, bytes) else str(raw)
            keys = self._keys(source)
            while True:
                ids = await self._redis().zrangebyscore(keys[0], "-inf", horizon, start=0, num=_BATCH)
                if not ids:
                    break
                removed, dropped = await self._redis().eval(_REMOVE, 4, *keys[:4], *ids)
                expired[source] = expired.get(source, 0) + int(removed)
                if not int(dropped):  # nothing left the sorted set: the next read would be the same
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


def _id(entry: Parked) -> str:
    return f"{entry.delivery_id}|{entry.digest.hex()}"


def _encode(entry: Parked) -> bytes:
    head = {
        "source": entry.source,
        "delivery_id": entry.delivery_id,
        "timestamp": entry.timestamp_text,
        "digest": entry.digest.hex(),
        "event": entry.event,
        "received_at": entry.received_at,
    }
    return orjson.dumps(head) + b"\n" + entry.body


def _decode(payload: bytes) -> Parked:
    head, _, body = payload.partition(b"\n")
    fields = orjson.loads(head)
    return Parked(
        fields["source"],
        fields["delivery_id"],
        fields["timestamp"],
        bytes.fromhex(fields["digest"]),
        fields["event"],
        body,
        float(fields["received_at"]),
    )
