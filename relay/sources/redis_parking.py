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

logger = logging.getLogger(__name__)

_DROP = """
local base = ARGV[1]
local function class_of(size)
  local class = 0
  while size >= 1 do size, class = math.floor(size / 2), class + 1 end
  return class  -- the bit length, as parking.size_class
end
local function sized(source, id, size, at)
  redis.call('ZADD', base .. ':size:' .. source, class_of(size) * 1e11 - tonumber(at), id)
end
local function drop(source, id)
  local zset, data = base .. ':src:' .. source, base .. ':data:' .. source
  local payload = redis.call('HGET', data, id)
  local size = 0
  redis.call('HDEL', base .. ':tries:' .. source, id)
  redis.call('ZREM', base .. ':size:' .. source, id)
  if payload then
    redis.call('HDEL', data, id)
    size = string.len(payload) + tonumber(ARGV[2])
  end
  local dropped = redis.call('ZREM', zset, id)
  if dropped == 1 then
    if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
    redis.call('ZINCRBY', KEYS[3], -1, source)
  end
  redis.call('DECRBY', KEYS[2], size)
  redis.call('ZINCRBY', KEYS[4], -size, source)
  if redis.call('ZCARD', zset) == 0 then
    -- bytes whose payload vanished (an eviction by Redis, a manual HDEL) are given back here
    redis.call('DECRBY', KEYS[2], tonumber(redis.call('ZSCORE', KEYS[4], source) or '0'))
    redis.call('ZREM', KEYS[3], source)
    redis.call('ZREM', KEYS[4], source)
    redis.call('DEL', data, base .. ':tries:' .. source, base .. ':size:' .. source)
  end
  if tonumber(redis.call('GET', KEYS[1]) or '0') == 0 then
    redis.call('SET', KEYS[2], 0)  -- nothing parked, nothing counted (bytes parked before an upgrade)
  end
  return {payload and 1 or 0, dropped}
end
local function rebuild(source)
  -- the size: key from the source's entries (those parked before it existed, or after it was lost); a member
  -- whose payload is gone is dropped, or the key would name fewer than the source holds at every park after
  local zset, data = base .. ':src:' .. source, base .. ':data:' .. source
  redis.call('DEL', base .. ':size:' .. source)
  local listed = redis.call('ZRANGE', zset, 0, -1, 'WITHSCORES')
  for i = 1, #listed, 2 do
    local payload = redis.call('HGET', data, listed[i])
    if payload then
      sized(source, listed[i], string.len(payload) + tonumber(ARGV[2]), listed[i + 1])
    else
      drop(source, listed[i])
    end
  end
end
local function consistent()
  -- the totals agree with the per-source ones (they drift when Redis loses a key by eviction, or
  -- hold data parked before the per-source totals existed)
  local count, size = 0, 0
  for i, value in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')) do
    if i % 2 == 0 then count = count + tonumber(value) end
  end
  for i, value in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')) do
    if i % 2 == 0 then size = size + tonumber(value) end
  end
  return count == tonumber(redis.call('GET', KEYS[1]) or '0') and size == tonumber(redis.call('GET', KEYS[2]) or '0')
end
local function repair()
  -- count every total again from what each source really holds; members whose payload is gone leave
  local count, size = 0, 0
  redis.call('DEL', KEYS[3], KEYS[4])
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    local zset, data, tries = base .. ':src:' .. name, base .. ':data:' .. name, base .. ':tries:' .. name
    local held, weight = 0, 0
    for _, id in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
      local payload = redis.call('HGET', data, id)
      if payload then
        held = held + 1
        weight = weight + string.len(payload) + tonumber(ARGV[2])
      else
        redis.call('ZREM', zset, id)
        redis.call('HDEL', tries, id)
      end
    end
    if held > 0 then
      rebuild(name)
      redis.call('ZADD', KEYS[3], held, name)
      redis.call('ZADD', KEYS[4], weight, name)
    else
      redis.call('DEL', zset, data, tries, base .. ':size:' .. name)
    end
    count, size = count + held, size + weight
  end
  redis.call('SET', KEYS[1], count)
  redis.call('SET', KEYS[2], size)
end
"""
_PARK = (
    _DROP
    + """
local source, id, score, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local per, most, room = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local size = string.len(payload) + tonumber(ARGV[2])
if size > room then return {'full'} end
local own, tries = base .. ':src:' .. source, base .. ':tries:' .. source
if redis.call('HEXISTS', base .. ':data:' .. source, id) == 1 then
  -- another attempt of a parked delivery: counted once, its signature kept beside the earlier ones
  local held = redis.call('HGET', tries, id) or ''
  if not string.find(';' .. held, ';' .. ARGV[11], 1, true) then
    local list = {}
    for token in string.gmatch(held, '[^;]+') do table.insert(list, token) end
    table.insert(list, ARGV[10])
    if #list > tonumber(ARGV[12]) then table.remove(list, 2) end  -- the first, and the latest others
    redis.call('HSET', tries, id, table.concat(list, ';'))
    redis.call('ZADD', own, score, id)
    local held_payload = redis.call('HGET', base .. ':data:' .. source, id)
    sized(source, id, string.len(held_payload) + tonumber(ARGV[2]), score)  -- now its newest, as in `own`
  end
  return {'parked'}
end
drop(source, id)  -- a member whose payload is gone
local answer, repaired = {'parked'}, false
for _ = 1, 100000 do
  local victim, capped, by_bytes = nil, false, false
  if redis.call('ZCARD', own) >= per then
    victim, capped = source, true  -- its own cap: no total involved
  else
    local count = tonumber(redis.call('GET', KEYS[1]) or '0')
    if count >= most then
      victim = redis.call('ZREVRANGE', KEYS[3], 0, 0)[1]
    elseif tonumber(redis.call('GET', KEYS[2]) or '0') + size > room then
      victim, by_bytes = redis.call('ZREVRANGE', KEYS[4], 0, 0)[1], true
    else
      redis.call('HSET', base .. ':data:' .. source, id, payload)
      redis.call('HSET', tries, id, ARGV[10])
      redis.call('ZADD', own, score, id)
      sized(source, id, size, score)
      redis.call('INCR', KEYS[1])
      redis.call('INCRBY', KEYS[2], size)
      redis.call('ZINCRBY', KEYS[3], 1, source)
      redis.call('ZINCRBY', KEYS[4], size, source)
      redis.call('SADD', KEYS[5], source)
      return answer
    end
  end
  local chosen = victim and redis.call('ZRANGE', base .. ':src:' .. victim, 0, 0)[1]
  if chosen and by_bytes then
    -- past the bytes bound, the oldest of the source's largest size class (parking.py says why)
    local sizes = base .. ':size:' .. victim
    if redis.call('ZCARD', sizes) < redis.call('ZCARD', base .. ':src:' .. victim) then rebuild(victim) end
    local largest = redis.call('ZREVRANGE', sizes, 0, 0)[1]
    while largest and not redis.call('ZSCORE', base .. ':src:' .. victim, largest) do
      redis.call('ZREM', sizes, largest)  -- gone by another way (an eviction by Redis): never picked again
      largest = redis.call('ZREVRANGE', sizes, 0, 0)[1]
    end
    chosen = largest or chosen
  end
  if chosen and (repaired or capped or consistent()) then
    drop(victim, chosen)
    table.insert(answer, victim)
  else
    -- the totals name entries no source holds, or disagree with the per-source ones (keys lost to
    -- an eviction by Redis, data parked before these keys existed): count them all again, once;
    -- still no room to make then means full
    if repaired then return {'full'} end
    repaired = true
    repair()
  end
end
return {'full'}
"""
)
_REMOVE = (
    _DROP
    + """
local removed, dropped = 0, 0
for i = 4, #ARGV do
  local result = drop(ARGV[3], ARGV[i])
  removed = removed + result[1]
  dropped = dropped + result[2]
end
return {removed, dropped}
"""
)
"""Removes ids from the sorted set and the hash. A member whose payload is gone (an `allkeys-*`
eviction, a manual HDEL) is removed too. Answers {removed with a payload, removed from the sorted set}."""
_REPAIR = (
    _DROP
    + """
if consistent() then return 0 end
repair()
return 1
"""
)
"""The attendant's check: counts every total again when they disagree. Answers 1 if it did."""
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
                        _PARK,
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
            self._redis().eval(_REMOVE, 5, *self._totals(), self._base, ENTRY_OVERHEAD, source, *ids)
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
        if await self._written(self._redis().eval(_REPAIR, 5, *self._totals(), self._base, ENTRY_OVERHEAD)):
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
