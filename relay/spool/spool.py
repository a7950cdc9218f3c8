"""The spool's state, in one place: group-committed writes and deletes, per-key presence, what is taken.

- `put()` returns once the record's transaction is durable (fsync). Every record waiting when the
  writer is free goes into one transaction: one fsync for all of them (group commit).
- `holds(key)`: the key has spooled records, so its next record must be spooled too (per-key order).
- A row on disk is offered to the drainer by `heads()` unless it is:
  - *held*: spooled while its first publish is still in the producer (`put(held=True)`), until
    `settle()`: acknowledged, it is deleted; failed, it is drained like any other;
  - *taken*: a drain publish of it is in flight (`take()` / `release()`);
  - *acknowledged but undeleted*: Kafka acknowledged it and SQLite refused its delete. Only the delete
    is retried (`retry_deletes()`), never the publish; meanwhile `problem` is set (not ready);
  - *stuck*: Kafka and the DLQ both refused it for good; kept on disk for the next start.
- `delete()` is group-committed too: each acknowledgement's delete joins the next transaction.
- `kafka_ok`: the last attempt to reach Kafka (a direct publish, a held row's first publish, a drain
  pass, the drainer's probe of its metadata) succeeded. While it is False every new record goes to the
  spool (no wait per request).
- Memory is per key (`_keys`) and per row in flight (held, taken, undeleted), never per row on disk.
- Full (`RELAY_SPOOL_MAX_BYTES`) is Unavailable("spool_full"): a 503, never an eviction.

This class owns all of that state (declared in relay/spool/base.py, with the open and the close); the
Spooler (the publish path) and the Drainer only call it.

Delivery is at-least-once: a crash between Kafka's acknowledgement and the delete publishes the record
again at the next start, and so does a held record whose first publish lands after it was released.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Protocol

from relay.errors import Unavailable
from relay.spool.base import Entry, SpoolBase
from relay.spool.room import disk_free, no_room
from relay.spool.store import Pending, Row

logger = logging.getLogger(__name__)
DELETE_FAILED = "spool_delete_failed"
WRITE_RETRY_SECONDS = 30.0
"""After a write failed for another reason than room (read-only, EIO, a foreign lock), how long readiness does not
count on the spool; then writes are tried again, and the first says whether it can (spool_full's Retry-After, too)."""


class Stored(Protocol):
    """What a delete needs of a row: its id, and its key and size for the counts."""

    @property
    def id(self) -> int: ...
    @property
    def key(self) -> bytes: ...
    @property
    def size(self) -> int: ...


class Spool(SpoolBase):
    def mark_kafka(self, ok: bool) -> None:
        """What the last attempt to reach Kafka says (`kafka_ok`); a failure's time too, which the drainer's probe
        waits out before it asks Kafka's metadata (relay/spool/probe.py, KafkaProbe), and the time Kafka came back
        up, from which a held row's release counts (relay/spool/spooler.py)."""
        if not ok:
            self.kafka_failed = time.monotonic()
        elif not self.kafka_ok:
            self.kafka_up_since = time.monotonic()
        self.kafka_ok = ok

    def holds(self, key: bytes) -> bool:
        return key in self._keys  # a key's count is removed at 0: a dict lookup on the hot path

    def room_for(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def has_room(self, size: int) -> bool:
        """What readiness asks: under the cap, no write failed for another reason in the last WRITE_RETRY_SECONDS,
        and, once a write found the disk full, that much freed in the file by deletes since, or free on the disk (a
        write is still tried meanwhile, and one that succeeds says so)."""
        if not self.room_for(size):
            return False
        if self.write_failed is not None and time.monotonic() - self.write_failed < WRITE_RETRY_SECONDS:
            return False
        return not self.disk_full or self.freed >= size or disk_free(self.directory) >= size

    def drainable(self) -> int:
        """Rows on disk that the drainer may take now (or whose delete it must retry)."""
        blocked = len(self.held) + len(self.taken) + len(self.stuck)
        return max(self.entries - blocked, 0)

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
        self._wake_writer()
        return await future

    async def delete(self, rows: Sequence[Stored]) -> bool:
        """Remove rows Kafka acknowledged, in the writer's next transaction. False when SQLite refused:
        the rows are then kept as acknowledged-undeleted, never offered to the drainer again, and only
        their delete is retried. A cancelled caller does not stop the delete, nor the counts' update."""
        return await self._queue_delete([Entry(row.id, row.key, row.size) for row in rows], retry=False)

    async def retry_deletes(self) -> bool:
        """Try again to delete the acknowledged rows whose delete failed. True once none is left."""
        if self.undeleted:
            await self._queue_delete(list(self.undeleted.values()), retry=True)
        return not self.undeleted

    async def _queue_delete(self, entries: list[Entry], *, retry: bool) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._deletes.append((entries, future, retry))
        self._wake_writer()
        return await asyncio.shield(future)

    def _wake_writer(self) -> None:  # it serves every request: in an empty context, so in no request's trace
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), context=contextvars.Context())

    async def _write(self) -> None:
        while self._queue or self._deletes:
            if self._queue:
                batch, self._queue = self._queue, []
                await self._insert(batch)
            if self._deletes:
                deletes, self._deletes = self._deletes, []
                ok = await self._delete(self._still_held(deletes))
                for _, future, _ in deletes:
                    if not future.done():
                        future.set_result(ok)

    def _still_held(self, deletes: list[tuple[list[Entry], asyncio.Future[bool], bool]]) -> list[Entry]:
        """The rows to delete, each once: a retry's only while their delete is still owed (a retry queued while
        an earlier one ran, a drain after a stop cancelled the drainer's, would count them out twice)."""
        rows = {
            entry.id: entry for group, _, retry in deletes for entry in group if not retry or entry.id in self.undeleted
        }
        return list(rows.values())

    async def _insert(self, batch: list[tuple[Pending, bool, asyncio.Future[int]]]) -> None:
        started = time.perf_counter()
        try:
            ids = await self._run(self._store.insert, [record for record, _, _ in batch], self._clock())
        except Exception as exc:  # SQLite's; RuntimeError: the spool was closed (at exit); else a record's bug
            if isinstance(exc, sqlite3.Error) and no_room(exc):
                self.disk_full, self.freed = True, 0
            else:
                self.write_failed = time.monotonic()
            for record, _, future in batch:
                self._forget(record.key, record.size)
                if not future.done():
                    future.set_exception(Unavailable("spool_error", f"the spool could not write: {exc}"))
            why = exc if isinstance(exc, sqlite3.Error | RuntimeError) else f"{type(exc).__name__}: {exc}"
            logger.error("spool write failed (%d record(s) answered 503): %s", len(batch), why)
            return
        self._metrics.spool_write_duration.observe(time.perf_counter() - started)
        self.disk_full, self.write_failed = False, None
        now = self._clock()
        for (_, held, future), row_id in zip(batch, ids, strict=True):
            if held:
                self.held.add(row_id)
            self.entries += 1
            self.oldest = now if self.oldest is None else self.oldest
            self._metrics.spooled.inc()
            if not future.done():
                future.set_result(row_id)
        self.changed.set()

    async def _delete(self, entries: list[Entry]) -> bool:
        if not entries:
            return True
        try:
            await self._run(self._store.delete, [entry.id for entry in entries])
        except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: the spool was closed (at exit)
            self._metrics.spool_delete_failures.inc()
            fresh = [entry for entry in entries if entry.id not in self.undeleted]
            self.undeleted.update((entry.id, entry) for entry in entries)
            self.problem = DELETE_FAILED
            logger.error(
                "spool delete failed: %d record(s) Kafka acknowledged stay on disk (%d undeleted); only their"
                " delete is retried, they are not published again: %s",
                len(fresh),
                len(self.undeleted),
                exc,
            )
            return False
        self.freed += sum(entry.size for entry in entries)  # room in the file, which the disk's free room hides
        for entry in entries:
            self.undeleted.pop(entry.id, None)
            self._forget(entry.key, entry.size)
            self.entries -= 1
        if not self.undeleted and self.problem == DELETE_FAILED:
            self.problem = None
            logger.warning("spool deletes work again; the acknowledged records are gone from the spool")
        try:
            self.oldest = await self._run(self._store.oldest) if self.entries else None
        except (sqlite3.Error, RuntimeError) as exc:  # the gauge keeps its last value; the delete is done
            logger.warning("spool: could not read the oldest record's age: %s", exc)
        self.changed.set()
        return True

    def _forget(self, key: bytes, size: int) -> None:
        self._keys[key] -= 1
        if self._keys[key] <= 0:
            del self._keys[key]
        self.bytes = max(self.bytes - size, 0)  # a damaged size may have been counted otherwise at the start

    async def settle(self, row_id: int, record: Pending, *, acked: bool) -> None:
        """The first publish of a held record settled: acknowledged, it leaves the spool; else it is drained.

        It stays held until its delete is done (or has failed, and it is kept as acknowledged-undeleted),
        so no drain pass can take it in between."""
        if acked:
            await self.delete([Entry(row_id, record.key, record.size)])
        self.held.discard(row_id)
        self.changed.set()

    async def heads(self, limit: int) -> list[Row]:
        """The oldest row of each key, but none of a key whose oldest row is held, taken, undeleted or stuck."""
        rows = await self._run(self._store.heads, limit, sorted(self._blocked()))
        blocked = self._blocked()  # checked again: a row may have become held or taken while the query ran
        return [row for row in rows if row.id not in blocked]

    def _blocked(self) -> set[int]:
        return self.held | self.taken | set(self.undeleted) | self.stuck

    def take(self, rows: Sequence[Row]) -> None:
        self.taken.update(row.id for row in rows)

    def release(self, row_id: int) -> None:
        self.taken.discard(row_id)
        self.changed.set()

    def stick(self, row: Row, why: str) -> None:
        """`row` can go neither to its topic nor to the DLQ (both refused it for good; or it is damaged and there is
        no DLQ): kept on disk, not offered again in this process."""
        self.stuck.add(row.id)
        logger.error(
            "spooled record %d (topic %s) cannot be published, nor moved to the DLQ; kept on disk: %s",
            row.id,
            row.topic,
            why,
        )
