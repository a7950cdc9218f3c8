"""The spool as the pipeline and the drainer use it: group-committed writes, per-key presence, bounds.

- `put()` returns once the record's transaction is durable (fsync). Every record waiting when the
  writer is free goes into one transaction: one fsync for all of them (group commit).
- `holds(key)`: the key has spooled records, so its next record must be spooled too (per-key order).
- `put(held=True)` / `settle(id, acked)`: a record spooled while its first publish is still in the producer
  is *held*: the drainer leaves it (and its key) alone until that publish settles. Acknowledged, it is
  deleted; failed, it is drained like any other. Only a crash between Kafka's acknowledgement and the
  delete publishes it twice.
- Full (`RELAY_SPOOL_MAX_BYTES`) is Unavailable("spool_full"): a 503, never an eviction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from relay.errors import Unavailable
from relay.metrics import Metrics
from relay.spool.store import Pending, Row, SpoolStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, metrics: Metrics, clock: Callable[[], float] = time.time):
        self.directory = directory
        self.max_bytes = max_bytes
        self._store = SpoolStore(directory)
        self._metrics = metrics
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._queue: list[tuple[Pending, bool, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._keys: Counter[bytes] = Counter()
        self._sizes: dict[int, tuple[bytes, int]] = {}
        self.entries = 0
        self.bytes = 0
        self.held: set[int] = set()
        self.changed = asyncio.Event()
        self.oldest: float | None = None

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def open(self) -> None:
        """Recover what a previous process left: counted, and drained from the start."""
        problem = await self._run(self._store.open)
        if problem:
            logger.error("%s", problem)
        self.entries, self.bytes, self.oldest, keys = await self._run(self._store.totals)
        self._keys = Counter(keys)
        self._metrics.spool_entries.set_function(lambda: self.entries)
        self._metrics.spool_bytes.set_function(lambda: self.bytes)
        self._metrics.spool_oldest_age.set_function(lambda: 0 if self.oldest is None else self._clock() - self.oldest)
        self._metrics.spool_set_aside.set_function(lambda: len(self._store.set_aside()))
        if self.entries:
            logger.warning("spool %s holds %d record(s) from before; draining them", self.directory, self.entries)
            self.changed.set()

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)

    def holds(self, key: bytes) -> bool:
        return key in self._keys  # a key's count is removed at 0: a dict lookup on the hot path

    def room_for(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    async def put(self, record: Pending, *, held: bool = False) -> int:
        """Durable once this returns: the id of the record in the spool. Raises Unavailable.

        `held`: its first publish is still in the producer. It is marked held in the same step that
        makes it visible, so no drain pass can take it in between."""
        if not self.room_for(record.size):
            raise Unavailable("spool_full", f"the spool holds {self.bytes} bytes of {self.max_bytes}", retry_after=30)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((record, held, future))
        self._keys[record.key] += 1  # at once: the key's next record must follow this one
        self.bytes += record.size
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            started = time.perf_counter()
            try:
                ids = await self._run(self._store.insert, [record for record, _, _ in batch], self._clock())
            except sqlite3.Error as exc:
                for record, _, future in batch:
                    self._forget(record.key, record.size)
                    future.set_exception(Unavailable("spool_error", f"the spool could not write: {exc}"))
                logger.error("spool write failed (%d record(s) answered 503): %s", len(batch), exc)
                continue
            self._metrics.spool_write_duration.observe(time.perf_counter() - started)
            now = self._clock()
            for (record, held, future), row_id in zip(batch, ids, strict=True):
                if held:
                    self.held.add(row_id)
                self._sizes[row_id] = (record.key, record.size)
                self.entries += 1
                self.oldest = now if self.oldest is None else self.oldest
                self._metrics.spooled.inc()
                if not future.done():
                    future.set_result(row_id)
            self.changed.set()

    def _forget(self, key: bytes, size: int) -> None:
        self._keys[key] -= 1
        if self._keys[key] <= 0:
            del self._keys[key]
        self.bytes -= size

    async def settle(self, row_id: int, *, acked: bool) -> None:
        """The first publish of a held record settled: acknowledged, it leaves the spool; else it is drained."""
        self.held.discard(row_id)
        if acked:
            await self.delete([row_id])
        self.changed.set()

    async def heads(self, limit: int) -> list[Row]:
        return await self._run(self._store.heads, limit, sorted(self.held))

    async def delete(self, ids: Sequence[int]) -> None:
        ids = [i for i in ids if i in self._sizes]
        if not ids:
            return
        await self._run(self._store.delete, ids)
        for row_id in ids:
            key, size = self._sizes.pop(row_id)
            self._forget(key, size)
            self.entries -= 1
        self.oldest = await self._run(self._store.oldest) if self.entries else None

    def adopt(self, rows: Sequence[Row]) -> None:
        """Rows read back from disk (spooled by an earlier process): their sizes, for the delete."""
        for row in rows:
            self._sizes.setdefault(row.id, (row.key, row.size))
