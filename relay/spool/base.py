"""The spool's state, declared (relay/spool/spool.py says what each part means), and its file's lifecycle: open
with the counts recovered and the gauges wired, `spool drain`'s salvage, close."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from relay.spool.database import SpoolRefused
from relay.spool.metrics import SpoolMetrics
from relay.spool.store import Pending, SpoolStore

# These lines keep the logger name they had before the split (log queries filter on it).
logger = logging.getLogger("relay.spool.spool")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    key: bytes
    size: int


class SpoolBase:
    """The Spool's state and its file; the Spool (relay/spool/spool.py) is what the rest of the relay uses."""

    def __init__(
        self, directory: Path, *, max_bytes: int, metrics: SpoolMetrics, clock: Callable[[], float] = time.time
    ):
        self.directory = directory
        self.max_bytes = max_bytes
        self._store = SpoolStore(directory)
        self._metrics = metrics
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._queue: list[tuple[Pending, bool, asyncio.Future[int]]] = []
        self._deletes: list[tuple[list[Entry], asyncio.Future[bool], bool]] = []  # rows, answer, a retry
        self._writer: asyncio.Task[None] | None = None
        self._keys: Counter[bytes] = Counter()
        self.entries = 0
        self.bytes = 0
        self.held: set[int] = set()
        self.taken: set[int] = set()
        self.undeleted: dict[int, Entry] = {}
        self.stuck: set[int] = set()
        self.kafka_ok = True
        self.kafka_failed = -math.inf  # when Kafka last did not take a record (time.monotonic): `mark_kafka`
        self.kafka_up_since = -math.inf  # when Kafka was last marked up after being down (time.monotonic)
        self.disk_full = False  # a write found the disk full; a write that succeeds since clears it
        self.freed = 0  # the bytes of the rows deleted since a write found the disk full: room in the file
        self.write_failed: float | None = None  # when a write last failed for another reason (monotonic)
        self.problem: str | None = None
        """A reason code while the spool cannot do its job (readiness): `spool_delete_failed`."""
        self.changed = asyncio.Event()
        self.oldest: float | None = None

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def on_store(self, call: Callable[[SpoolStore], T]) -> T:
        """Run `call` on the store, on the spool's own thread (the recovery check, relay/spool/recovery.py)."""
        return await self._run(call, self._store)

    async def open(self) -> None:
        """Recover what a previous process left: counted, and drained from the start."""
        problem = await self._run(self._store.open)
        if problem:
            logger.error("%s", problem)
        try:
            self.entries, self.bytes, self.oldest, keys = await self._run(self._store.totals)
        except sqlite3.Error as exc:  # the refusal (exit 3) as for an open, never a traceback
            await self._run(self._store.close)
            raise SpoolRefused(f"spool {self._store.path} cannot be read ({exc}); nothing was set aside") from None
        self._keys = Counter(keys)
        self._metrics.spool_entries.set_function(lambda: self.entries)
        self._metrics.spool_bytes.set_function(lambda: self.bytes)
        self._metrics.spool_oldest_age.set_function(lambda: 0 if self.oldest is None else self._clock() - self.oldest)
        self._metrics.spool_set_aside.set_function(lambda: len(self._store.set_aside()))
        self._metrics.spool_acked_undeleted.set_function(lambda: len(self.undeleted))
        self._metrics.spool_stuck.set_function(lambda: len(self.stuck))
        if self.entries:
            logger.warning("spool %s holds %d record(s) from before; draining them", self.directory, self.entries)
            self.changed.set()

    async def salvage(self) -> tuple[list[str], int]:
        """Copy what the files set aside still yield into this spool, within its room (`spool drain` only,
        between drain passes: nothing else in flight), and count it. One line per file; the records copied."""
        lines, copied = await self._run(self._store.salvage, self.max_bytes - self.bytes)
        if copied:
            self.entries, self.bytes, self.oldest, keys = await self._run(self._store.totals)
            self._keys = Counter(keys)
            self.changed.set()
        return lines, copied

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)
