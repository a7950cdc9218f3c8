"""The vocabulary of the seams between packages: Protocols, so tests can pass fakes, and the values that
cross them. It imports no other relay module, so every package may import it."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""The histogram buckets (seconds) of every latency metric, whichever package's group declares it."""


class Claim(enum.Enum):
    """What a dedupe store answers to a claim."""

    NEW = "new"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Ack:
    """Where Kafka wrote a record."""

    topic: str
    partition: int
    offset: int


class Publisher(Protocol):
    async def start(self, *, timeout: float, background: bool = ...) -> None: ...
    async def stop(self, *, timeout: float = ...) -> None: ...
    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack: ...
    async def ping(self, *, timeout: float = ...) -> bool: ...


class DedupeStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ping(self) -> bool: ...
    async def claim(self, key: str, *, wait: float) -> Claim: ...
    async def commit(self, key: str) -> None: ...
    async def release(self, key: str) -> None: ...
    async def extend(self, key: str, seconds: float) -> bool:
        """Lengthen the claim's lease to `seconds` from now. True: held under a lease, to renew before it ends;
        False: nothing to renew (a store without leases, or a mark no longer this claim's)."""
        ...


@runtime_checkable
class SendsCommits(Protocol):
    """A shared store that can send a commit without its caller awaiting it (relay.pipeline.commits)."""

    def commit_soon(self, key: str, done: Callable[[BaseException | None], None]) -> asyncio.Future[object]:
        """Queue the commit of `key`. `done` is called once, from the event loop, never from this call:
        None once the commit landed, DedupeUnavailable if it failed, CancelledError if the future was
        cancelled (the wait stopped; the operation may still run). Raises Unavailable at once if the
        store has stopped. `done` is also how relay.pipeline.commits forgets the commit: a store that
        never calls it leaves the commit in its pending map."""
        ...
