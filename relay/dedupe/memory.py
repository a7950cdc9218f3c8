"""Delivery-id dedupe: claim before publishing, commit after Kafka acknowledged, release on failure.

A claimed id is *in flight* until it is committed (remembered as *done* for the TTL) or released
(forgotten, so the sender's retry goes through). A second claim of an in-flight id waits for the
first one's outcome, at most `wait` seconds, then raises Unavailable("in_flight"): at most one
publish per id, and nothing is swallowed while the sender still retries.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from relay.errors import Unavailable
from relay.types import Claim


class MemoryDedupeStore:
    """Process-local store. Done ids expire after `ttl` seconds; past `max_entries`, the oldest go first."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError(f"ttl ({ttl}) and max_entries ({max_entries}) must be positive")
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._done: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, asyncio.Event | None] = {}
        self.evicted = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._done)

    def _expire(self, now: float) -> None:
        done = self._done
        while done:
            key, expires = next(iter(done.items()))
            if expires > now and len(done) <= self._max_entries:
                return
            del done[key]
            if expires > now:
                self.evicted += 1

    async def claim(self, key: str, *, wait: float) -> Claim:
        """NEW: the caller must publish then commit or release. DUPLICATE: already relayed."""
        now = self._clock()
        claim = self._try_claim(key, now)
        if claim is not None:
            return claim
        return await self._claim_after_the_other(key, now + wait)

    def _try_claim(self, key: str, now: float) -> Claim | None:
        """The claim's answer, or None while another claim of `key` is in flight."""
        expires = self._done.get(key)
        if expires is not None:
            if expires > now:
                return Claim.DUPLICATE
            del self._done[key]  # past its TTL: the next commit's sweep would have dropped it
        if key in self._in_flight:
            return None
        self._in_flight[key] = None  # its Event is made only if another claim has to wait on it
        return Claim.NEW

    async def _claim_after_the_other(self, key: str, deadline: float) -> Claim:
        while True:
            pending = self._in_flight.get(key)
            if pending is None:
                pending = self._in_flight[key] = asyncio.Event()
            try:
                await asyncio.wait_for(pending.wait(), max(deadline - self._clock(), 0.0))
            except TimeoutError:
                raise Unavailable("in_flight", "the same delivery is being published", retry_after=1) from None
            claim = self._try_claim(key, self._clock())
            if claim is not None:
                return claim

    async def commit(self, key: str) -> None:
        now = self._clock()
        self._done[key] = now + self._ttl
        self._done.move_to_end(key)
        self._wake(key)
        self._expire(now)

    async def release(self, key: str) -> None:
        self._wake(key)

    async def extend(self, key: str, seconds: float) -> bool:
        """In-flight claims of this process have no lease (they end with the process): nothing to renew."""
        return False

    def _wake(self, key: str) -> None:
        pending = self._in_flight.pop(key, None)
        if pending is not None:
            pending.set()
