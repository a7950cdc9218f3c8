"""Publishes spooled records to Kafka: per key in order, deleted only once Kafka acknowledged them.

Each pass takes the oldest record of each key (not held by a first publish still in the producer),
publishes them concurrently (different keys, so no order between them), and deletes those Kafka
acknowledged. A key's next record is taken only after its previous one left the spool. After a
failure the drainer waits, doubling up to 5 s, then tries again: Kafka is still down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay.errors import PublishPending, Unavailable
from relay.metrics import Metrics
from relay.spool.spool import Spool
from relay.spool.store import Row
from relay.types import Publisher

logger = logging.getLogger(__name__)
BATCH = 200


class Drainer:
    def __init__(self, spool: Spool, publisher: Publisher, metrics: Metrics) -> None:
        self.spool = spool
        self._publisher = publisher
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.kafka_ok = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spool-drainer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pause = 0.1
        while True:
            if not self.spool.entries or len(self.spool.held) >= self.spool.entries:
                self.spool.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.spool.changed.wait()
                continue
            try:
                progressed = await self.pass_once()
            except Exception as exc:  # the next pass tries again; nothing leaves the spool unacknowledged
                logger.warning("spool drain pass failed: %s: %s", type(exc).__name__, exc)
                progressed = False
            pause = 0.1 if progressed else min(pause * 2, 5.0)
            if not progressed:
                await asyncio.sleep(pause)

    async def pass_once(self) -> bool:
        """One batch; True when something was acknowledged (and removed)."""
        # Held rows are skipped by the query and, in case one became held while it ran, here again.
        rows = [row for row in await self.spool.heads(BATCH) if row.id not in self.spool.held]
        if not rows:
            return False
        self.spool.adopt(rows)
        results = await asyncio.gather(*(self._publish(row) for row in rows))
        acked = [row.id for row, ok in zip(rows, results, strict=True) if ok]
        if acked:
            await self.spool.delete(acked)
            self._metrics.spool_drained.inc(len(acked))
        failed = len(rows) - len(acked)
        self.kafka_ok = not failed
        if failed:
            logger.warning("spool drain: %d of %d record(s) not acknowledged; retrying", failed, len(rows))
        return bool(acked)

    async def _publish(self, row: Row) -> bool:
        """True once Kafka acknowledged the row. A publish still pending is waited for, never repeated:
        the producer may still write it, and a second send could land it twice."""
        try:
            await self._publisher.publish(row.topic, row.key, row.value, row.headers)
        except PublishPending as pending:
            try:
                await pending.outcome
            except Unavailable:
                return False
        except Unavailable:
            return False
        return True

    async def drain(self, timeout: float) -> int:
        """Drain until empty or `timeout` passes (shutdown, `spool drain`). The entries left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.spool.entries > len(self.spool.held) and loop.time() < deadline:
            if not await self.pass_once():
                await asyncio.sleep(min(0.5, max(deadline - loop.time(), 0)))
        return self.spool.entries
