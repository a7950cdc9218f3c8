"""Skip the CloudEvents ids already handled: Kafka and the relay deliver at least once.

A copy reaches a consumer when a replay re-publishes, or when the consumer restarts before committing its
offsets (a MyTPE redelivery under a new delivery id is another id: status precedence catches that one).
`Idempotent.run(event_id, handler)` calls the handler unless the store has the id, marks it after the handler
returned, and makes a concurrent call for the same id through the same `Idempotent` wait for the first (two
`Idempotent`s over one store do not wait for each other: share one between the tasks of a process).

That is at least once, not exactly once: a crash between the handler's effects and the mark, a mark that fails,
or two processes handling one id at once (a rebalance) run the handler again. For an effect applied once, make
the mark part of it: a `SeenStore` whose `seen` reads a table with a unique key on the id, whose `mark` does
nothing, and a handler that inserts the id in the same transaction as its effects, so that a second copy's
insert fails on the key and rolls its effects back (docs/consumers.md, rule 2;
tests/consumer/test_consumer.py::test_with_the_mark_in_the_handlers_transaction_an_effect_is_applied_once).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class SeenStore(Protocol):
    """Where handled ids are remembered. On the consumer's own database, with the id written by the handler in
    the same transaction as its effects (the module's docstring), an effect is applied once across restarts."""

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

        A handler that raises, or a mark that fails, leaves the id unmarked (the exception propagates), so
        the next copy of that event is handled again: at least once.
        """
        while (running := self._running.get(event_id)) is not None:
            await asyncio.shield(running)  # the first call's outcome decides; it never raises here
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[event_id] = done  # before the store's `seen`, which may await: a copy then waits for this call
        try:
            if await self.store.seen(event_id):
                return False, None
            result = await handler()
            await self.store.mark(event_id)
            return True, result
        finally:
            del self._running[event_id]
            done.set_result(None)
