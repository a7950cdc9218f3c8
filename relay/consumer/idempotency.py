"""Process each CloudEvents id once, even though Kafka and the relay deliver at least once.

A duplicate reaches a consumer when MyTPE redelivers under a new delivery id that the relay cannot
recognise, when a replay re-publishes, or when the consumer itself restarts before committing its
offsets. `Idempotent.run(event_id, handler)` calls the handler only if the id was never handled,
marks it only after the handler returned, and makes a concurrent second call wait for the first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class SeenStore(Protocol):
    """Where handled ids are remembered. Back it with the consumer's own database (a unique key,
    written in the same transaction as the handler's effects) to make the guarantee survive restarts."""

    async def seen(self, event_id: str) -> bool: ...
    async def mark(self, event_id: str) -> None: ...


class MemorySeenStore:
    """A bounded in-process store: the newest `max_entries` ids, each for at most `ttl` seconds."""

    def __init__(
        self, *, max_entries: int = 100_000, ttl: float = 3 * 86400, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries <= 0 or ttl <= 0:
            raise ValueError("max_entries and ttl must be positive")
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock

    def __len__(self) -> int:
        return len(self._ids)

    async def seen(self, event_id: str) -> bool:
        expires = self._ids.get(event_id)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._ids[event_id]
            return False
        return True

    async def mark(self, event_id: str) -> None:
        now = self._clock()
        self._ids[event_id] = now + self._ttl
        self._ids.move_to_end(event_id)
        while self._ids and (len(self._ids) > self._max or next(iter(self._ids.values())) <= now):
            self._ids.popitem(last=False)


class Idempotent:
    def __init__(self, store: SeenStore | None = None) -> None:
        self.store: SeenStore = store if store is not None else MemorySeenStore()
        self._running: dict[str, asyncio.Future[None]] = {}

    async def run(self, event_id: str, handler: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(True, result) when this call handled the event; (False, None) when it was already handled.

        A handler that raises leaves the id unmarked (the exception propagates), so the redelivery of
        that event is handled again.
        """
        while (running := self._running.get(event_id)) is not None:
            await asyncio.shield(running)  # the first call's outcome decides; it never raises here
        if await self.store.seen(event_id):
            return False, None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[event_id] = done
        try:
            result = await handler()
            await self.store.mark(event_id)
            return True, result
        finally:
            del self._running[event_id]
            done.set_result(None)
