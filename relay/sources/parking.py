"""Parking: well-formed, fresh requests whose signature matched none of their source's secrets.

MyTPE invalidates a secret the moment it makes a new one, and retries only three times. A delivery
signed with a secret the relay does not have yet is therefore kept here, still answered 401, and
verified again when its source's secrets change (`Relay.reverify`). A forgery never verifies: it
ages out, and never reaches a family topic.

Bounds, all enforced at the door: entries and bytes overall, entries per source (so a flood aimed
at one source cannot take another's room), a token bucket per source (so a flood costs a dict
lookup, not memory), and an age after which an entry expires.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

ENTRY_OVERHEAD = 256
"""Bytes counted per entry beside its body: headers and bookkeeping."""


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked request: what is needed to verify it again and relay it as first received."""

    source: str
    delivery_id: str
    timestamp_text: str
    digest: bytes
    event: str
    body: bytes
    received_at: float

    @property
    def key(self) -> tuple[str, str, bytes]:
        # The signature is part of the key: a forger who knows a real delivery id cannot push the
        # real one out by parking a fake body under the same id first.
        return (self.source, self.delivery_id, self.digest)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class Limits:
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_per_source: int = 2_000
    max_age_seconds: float = 86_400.0
    rate_per_source: float = 20.0
    """Entries per second a source may park, on average; `burst` at once."""
    burst: int = 200


@dataclass(frozen=True, slots=True)
class Usage:
    entries: int
    bytes: int
    oldest_received_at: float | None


class ParkingLot(Protocol):
    """Where parked requests wait. `park` answers None once parked (or already parked), else why not:
    `rate_limited`, `source_full`, `full`, or `error` (the store did not answer)."""

    limits: Limits

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def park(self, entry: Parked) -> str | None: ...
    async def entries(self, source: str) -> list[Parked]: ...
    async def remove(self, entry: Parked) -> None: ...
    async def expire(self, now: float) -> dict[str, int]: ...
    async def usage(self) -> Usage: ...


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take()` spends one if there is one."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RateGate:
    """One token bucket per source, in this process: a refused request costs a dict lookup, no I/O."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, source: str) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            limits = self._limits
            bucket = self._buckets[source] = TokenBucket(limits.rate_per_source, limits.burst, self._clock)
        return bucket.take()


class MemoryParkingLot:
    """Parking in this process: it lasts as long as the process, and each replica parks what it received."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._gate = RateGate(limits, clock)
        self._entries: OrderedDict[tuple[str, str, bytes], Parked] = OrderedDict()  # oldest first
        self._per_source: dict[str, int] = {}
        self._bytes = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def park(self, entry: Parked) -> str | None:
        if entry.key in self._entries:
            return None
        if not self._gate.admit(entry.source):
            return "rate_limited"
        if self._per_source.get(entry.source, 0) >= self.limits.max_per_source:
            return "source_full"
        if len(self._entries) >= self.limits.max_entries or self._bytes + entry.size > self.limits.max_bytes:
            return "full"
        self._entries[entry.key] = entry
        self._per_source[entry.source] = self._per_source.get(entry.source, 0) + 1
        self._bytes += entry.size
        return None

    async def entries(self, source: str) -> list[Parked]:
        return [entry for entry in self._entries.values() if entry.source == source]

    async def remove(self, entry: Parked) -> None:
        if self._entries.pop(entry.key, None) is None:
            return
        self._bytes -= entry.size
        left = self._per_source[entry.source] - 1
        if left:
            self._per_source[entry.source] = left
        else:
            del self._per_source[entry.source]

    async def expire(self, now: float) -> dict[str, int]:
        """Drop entries received more than `max_age_seconds` before `now`; the count per source."""
        expired: dict[str, int] = {}
        horizon = now - self.limits.max_age_seconds
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.received_at > horizon:
                break
            await self.remove(oldest)
            expired[oldest.source] = expired.get(oldest.source, 0) + 1
        return expired

    async def usage(self) -> Usage:
        oldest = next(iter(self._entries.values())).received_at if self._entries else None
        return Usage(len(self._entries), self._bytes, oldest)
