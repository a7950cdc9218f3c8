"""The recovery check (`RELAY_SPOOL_RECOVERY_CHECK`): no duplicate from a drain pass a SIGKILL cut short.

A drained row is deleted as its acknowledgement arrives. A process killed while a pass was in flight
leaves rows Kafka may have written already; drained again, they would be written twice. With the check:

- before a pass is sent, its rows are marked *in flight* with the time, in one SQLite transaction
  (fsynced); a row's delete removes its mark (a trigger), so marks left at a start are exactly the
  rows a previous process sent and did not delete;
- before the first pass of a process, a `Finder` reads the partitions of those rows (Kafka's
  partitioner, by key) from the offset of their mark's time (less a margin for clock skew) to the end
  as it is then, and the rows whose record (same key, value bytes and headers, this hop's trace context
  aside: a CloudEvent carries its id and receive time; a DLQ record's value is the raw body) is already
  there are deleted without
  being published, counted in
  `mytpe_relay_spool_found_in_kafka_total`. The other marks are cleared; those rows are drained.

While Kafka cannot be reached the check is tried again before each pass (nothing is drained
meanwhile: Kafka is down). When it cannot be done for good (an ACL refusal, more to read than its
bound), it is given up with one error line: the rows are drained, at-least-once as without it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from relay.errors import KafkaRefused, Unavailable
from relay.spool import store
from relay.spool.metrics import SpoolMetrics
from relay.spool.spool import Spool
from relay.spool.store import Row
from relay.tracing.w3c import HOP_HEADERS

logger = logging.getLogger(__name__)
Sent = tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]
"""A record as the check compares it, exactly: key, value and headers."""


def sent(row: Row) -> Sent:
    """`row` as the check looks for it in Kafka: without this hop's trace context (HOP_HEADERS), which a traced
    drain sends in place of the row's (the value still tells records apart: a CloudEvent carries its `id`, and a
    DLQ record's other headers tell two quarantines of one delivery apart)."""
    return row.key, row.value, tuple((name, value) for name, value in row.headers if name not in HOP_HEADERS)


class Finder(Protocol):
    async def present(
        self, topic: str, records: Sequence[Sent], since: float, *, ignored: Collection[str] = ()
    ) -> set[Sent]:
        """Which of `records` (key, value, headers) `topic` holds among what was written from `since` (epoch s) on,
        each record there compared without its headers named in `ignored`.

        Raises KafkaRefused when the question cannot be answered for good, Unavailable (or OSError) when
        Kafka cannot be reached now."""
        ...


class Recovery:
    def __init__(self, finder: Finder, metrics: SpoolMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self._finder = finder
        self._metrics = metrics
        self._clock = clock
        self.checked = False
        self._waiting = False

    async def mark(self, spool: Spool, rows: Sequence[Row]) -> None:
        """Before a pass is sent. A mark SQLite cannot write (a full disk) is skipped, with a warning: the
        pass is sent unmarked, at-least-once as without the check, rather than not at all (a full spool
        that cannot drain never frees its disk). On any other failure its rows are released (none was
        sent) and the error raised."""
        ids, since = [row.id for row in rows], self._clock()
        try:
            await spool.on_store(lambda db: store.mark_in_flight(db, ids, since))
        except sqlite3.Error as exc:
            logger.warning("spool recovery check: a pass of %d record(s) sent unmarked (%s)", len(ids), exc)
        except BaseException:
            for row in rows:
                spool.release(row.id)
            raise

    async def check(self, spool: Spool, within: float | None = None) -> bool:
        """Once per process, before its first pass: drop the rows a killed process left that Kafka holds.
        False while Kafka cannot be reached (logged once): no pass may be sent yet, the next one tries again.
        `within`: a drain's time left (SIGTERM, `spool drain`); the check cut there is False too, and its rows
        stay spooled for the next start (a broker that does not answer takes up to the finder's bound)."""
        if self.checked:
            return True
        try:
            async with asyncio.timeout(within):
                return await self._check(spool)
        except TimeoutError:
            logger.warning("spool recovery check cut at the drain's deadline: its rows stay spooled, unsent")
            return False

    async def _check(self, spool: Spool) -> bool:
        marked = await spool.on_store(store.in_flight)
        if marked:
            found: list[Row] | None
            try:
                found = await self._found(marked)
            except KafkaRefused as refused:
                logger.error(
                    "spool recovery check given up (%s): %d record(s) sent before the last stop are drained"
                    " again, duplicates possible",
                    refused.detail,
                    len(marked),
                )
                found = None
            except (Unavailable, OSError) as exc:
                if not self._waiting:
                    logger.warning("spool recovery check waits for Kafka (%s); nothing is drained meanwhile", exc)
                self._waiting = True
                return False
            if found is not None:
                await self._drop(spool, found, len(marked))
            await self._clear(spool)
        self.checked = True
        return True

    async def _clear(self, spool: Spool) -> None:
        """Forget the marks left (a write, so only when there are some). One SQLite cannot write (a full disk) is
        kept, with a warning, rather than stopping every pass: each leaves with its row's delete, and a row
        drained meanwhile is marked again from its first time (`mark_in_flight`), so a later check looks
        further back for it, no more."""
        try:
            await spool.on_store(store.clear_in_flight)
        except sqlite3.Error as exc:
            logger.warning("spool recovery check: its marks could not be cleared (%s); drained all the same", exc)

    async def _drop(self, spool: Spool, found: list[Row], marked: int) -> None:
        if found:  # counted as found: a failed delete keeps them undeleted, retried alone, never published
            self._metrics.spool_found_in_kafka.inc(len(found))
            await spool.delete(found)
        logger.warning(
            "spool recovery check: %d of %d record(s) in flight at the last stop were in Kafka already;"
            " removed, not published again",
            len(found),
            marked,
        )

    async def _found(self, marked: list[tuple[Row, float]]) -> list[Row]:
        by_topic: dict[str, list[tuple[Row, float]]] = {}
        for row, since in marked:
            by_topic.setdefault(row.topic, []).append((row, since))
        found: list[Row] = []
        for topic, entries in by_topic.items():
            since = min(at for _, at in entries)
            present = await self._finder.present(topic, [sent(row) for row, _ in entries], since, ignored=HOP_HEADERS)
            found.extend(row for row, _ in entries if sent(row) in present)
        return found
