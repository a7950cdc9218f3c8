"""Fakes for pure and HTTP-level tests; the integration tests use the real broker instead."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.errors import PublishPending, StartupError, Unavailable
from relay.types import Ack


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class FakePublisher:
    """Records sends. `fail_with` raises on publish; `hold` makes publishes wait on an event."""

    sent: list[Sent] = field(default_factory=list)
    fail_with: Exception | None = None
    fail_start: bool = False
    reachable: bool = True
    hold: asyncio.Event | None = None
    pending: list[asyncio.Future[Ack]] = field(default_factory=list)
    leave_pending: bool = False
    started: bool = False
    holding: int = 0
    """Publishes waiting on `hold` right now: a test waits for them instead of sleeping."""

    async def start(self, *, timeout: float, background: bool = False) -> None:
        if self.fail_start:
            raise StartupError("Kafka at fake:9092 not reachable within 1s")
        self.started = True

    async def stop(self, *, timeout: float = 10.0) -> None:
        self.started = False

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if self.hold is not None:
            self.holding += 1
            try:
                await self.hold.wait()
            finally:
                self.holding -= 1
        if self.fail_with is not None:
            raise self.fail_with
        if self.leave_pending:
            future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            self.pending.append(future)
            raise PublishPending(_await(future), 1.0)
        self.sent.append(Sent(topic, key, value, list(headers)))
        return Ack(topic, 0, len(self.sent) - 1)

    async def ping(self, *, timeout: float = 2.0) -> bool:
        return self.reachable


async def _await(future: asyncio.Future[Ack]) -> Ack:
    return await future


def kafka_down() -> Unavailable:
    return Unavailable("kafka_error", "KafkaConnectionError")
