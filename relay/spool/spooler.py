"""The publish path with a spool: Kafka first, the spool when Kafka does not acknowledge in time.

The publisher given here is built with RELAY_SPOOL_AFTER_SECONDS as its publish bound
(`spooler_from_settings`), so the bound costs one timer per batch, as without a spool.

`publish()` answers one of three ways:
- an Ack: Kafka acknowledged within `RELAY_SPOOL_AFTER_SECONDS` (the spool is off this path);
- Spooled: the record's spool transaction is durable (fsync). If its first publish is still in the
  producer, the row is *held* until that publish settles: acknowledged, the row goes; failed, the
  drainer publishes it. So the record is not written twice, save a crash in between;
- Unavailable (503): neither happened (the spool is full or failed). If the first publish is still
  in the producer, it is a PublishPending, so the caller keeps its claim until it settles.

A key with records in the spool goes through the spool (per-key order), and so does everything while
the last attempt to reach Kafka failed (no 2 s wait per request during an outage).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from relay.errors import PublishPending, Unavailable
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.types import Ack, Publisher

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Spooled:
    row_id: int


class Spooler:
    def __init__(self, spool: Spool, drainer: Drainer, publisher: Publisher, *, after: float) -> None:
        self.spool = spool
        self.drainer = drainer
        self._publisher = publisher
        self._after = after  # the publisher's bound: a PublishPending raised here carries it
        self._following: set[asyncio.Task[None]] = set()

    async def publish(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> Ack | Spooled:
        if self.spool.holds(key) or not self.drainer.kafka_ok:
            return Spooled(await self.spool.put(Pending(topic, key, value, list(headers))))
        try:  # the publisher's own bound is RELAY_SPOOL_AFTER_SECONDS here: no timer per request
            return await self._publisher.publish(topic, key, value, headers)
        except PublishPending as pending:  # no acknowledgement in time: Kafka is down or slow
            self.drainer.kafka_ok = False
            future = asyncio.ensure_future(pending.outcome)
            return await self._spool_held(Pending(topic, key, value, list(headers)), future)
        except Unavailable:  # not written: Kafka is down, and the record goes to the spool
            self.drainer.kafka_ok = False
            return Spooled(await self.spool.put(Pending(topic, key, value, list(headers))))

    async def _spool_held(self, record: Pending, future: asyncio.Future[Ack]) -> Spooled:
        try:
            row_id = await self.spool.put(record, held=True)
        except Unavailable:
            raise PublishPending(_wait(future), self._after) from None
        task = asyncio.create_task(self._follow(row_id, future))
        self._following.add(task)
        task.add_done_callback(self._following.discard)
        return Spooled(row_id)

    async def _follow(self, row_id: int, outcome: asyncio.Future[Ack]) -> None:
        try:
            await outcome
        except PublishPending as pending:
            await self._follow(row_id, asyncio.ensure_future(pending.outcome))
            return
        except Unavailable:
            self.drainer.kafka_ok = False
            await self.spool.settle(row_id, acked=False)
            return
        self.drainer.kafka_ok = True
        await self.spool.settle(row_id, acked=True)

    async def settle_all(self, timeout: float) -> None:
        """Wait (bounded) for the first publishes of held rows; what is left is drained at the next start."""
        if self._following:
            await asyncio.wait(list(self._following), timeout=timeout)
            for task in self._following:
                task.cancel()


async def _wait(future: asyncio.Future[Ack]) -> Ack:
    return await future
