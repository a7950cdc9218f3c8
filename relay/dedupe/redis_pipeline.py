"""Redis commands issued while a round trip is under way go out together, in one pipeline.

redis-py spends about 90 CPU microseconds on a command sent on its own, and about 14 a command in a
pipeline of 50 (docs/performance.md). The dedupe store sends a claim and a commit per delivery from
many concurrent requests: each command joins the next pipeline, and one pipeline is in flight at a
time, so pipelines grow with the load, and at low load a command leaves at once. The commands are not
a transaction: each succeeds or fails on its own, as it would if sent alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

Command = tuple[Any, ...]


class Pipeline:
    """Sends the commands handed to `execute` in batches, one batch at a time, in the order given."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: asyncio.Task[None] | None = None

    def execute(self, *command: Any) -> asyncio.Future[Any]:
        """The reply to `command`; it fails with the command's own error, or the connection's (RedisError, OSError)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, reply))
        if self._sending is None:
            self._sending = loop.create_task(self._send_all())
        return reply

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sending = None
            for _, reply in self._queue:  # only when cancelled: nothing will send these
                _fail(reply, RedisError("the dedupe store is stopping"))
            self._queue = []

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # any error reaches every caller, as it would a command sent alone
            for _, reply in batch:
                _fail(reply, exc)
            return
        except asyncio.CancelledError:
            for _, reply in batch:
                _fail(reply, RedisError("the dedupe store is stopping"))
            raise
        for (_, reply), result in zip(batch, results, strict=True):
            if reply.done():  # its caller stopped waiting
                continue
            if isinstance(result, Exception):
                reply.set_exception(result)
            else:
                reply.set_result(result)

    async def close(self) -> None:
        """Stop sending; what was not sent fails with RedisError."""
        sending = self._sending
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)


def _fail(reply: asyncio.Future[Any], exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(exc)
        reply.exception()  # retrieved: a caller that gave up waiting must not leave it unreported
