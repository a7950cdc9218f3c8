"""Dedupe operations issued while a round trip is under way go out together, as one Lua script call.

redis-py spends tens of CPU microseconds on every command, in a pipeline too: packing, a read with its
own timeout, reply callbacks (docs/performance.md). The store's operations (claim, commit, release,
extend) from concurrent deliveries are queued instead; one batch is in flight at a time, and the next
holds what was queued meanwhile and during two more turns of the event loop after the reply
(`LINGER_TURNS`), so batches grow with the load. At low load an operation leaves at once: the linger
comes only between batches sent back to back, never before the first batch after an idle moment. A batch is one call of
relay.dedupe.redis_script.SCRIPT, which runs its operations in the order issued, each on its own, and
answers each its own reply or error.

Each caller gets its own outcome. An operation's error (WRONGTYPE, OOM under `noeviction`) fails that
operation only. An error for the whole call fails every operation of it: a lost connection or a timeout
(the script may have run: the outcome is unknown), or a refusal that ran nothing. A key redis-py cannot
encode fails its own operation before batching. The script goes by its digest (EVALSHA), and by its text
(EVAL) when the server does not have it (a restart, a failover) or the ACL user may not call EVALSHA
(from then on, always by text). A cluster-mode server refuses one call over keys of several hash slots
(CROSSSLOT); from the first refusal on, a batch goes as one call per slot, in one pipeline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import (
    ClusterCrossSlotError,
    DataError,
    NoPermissionError,
    NoScriptError,
    RedisError,
)

from relay.dedupe.connect import DEMOTED, forget_connections
from relay.dedupe.redis_script import DIGEST, SCRIPT, line, replies

logger = logging.getLogger(__name__)

Pending = tuple[bytes, bytes, asyncio.Future[Any]]  # key, line, the caller's reply

LINGER_TURNS = 2
"""Turns of the event loop a batch waits, when operations were queued while the previous one was in
flight, for more to join it: what the last reply and the loop's last poll made ready runs first. A turn,
not a time: uvloop rounds a timer's delay to whole milliseconds (0.3 ms, d3f349f's linger, is a
`call_soon`, and worked out as two turns). Measured (docs/performance.md, "The linger"): Redis mode's
throughput against memory mode's was higher in the three rounds runs since (medians 0.928x, 0.872x, 0.905x)
than in the three before (0.846x, 0.849x, 0.840x); its Kafka batches grew in probes (not committed) and in
the first of those runs (7.68 records), not in the second (4.79) nor the third (6.08; relay-memory's 5.99,
5.99 and 5.87). In probes, a linger of
1 ms gave larger batches but no more throughput, and one turn before every batch changed nothing."""


class Batcher:
    """Sends the operations handed to `execute` in batches, one batch at a time, in the order given."""

    def __init__(self, client: Redis, *, turns: int = LINGER_TURNS) -> None:
        self._client = client
        self._turns = turns
        self._by_digest = True  # false once the ACL user was refused EVALSHA
        self._by_slot = False  # true once the server refused keys of several slots in one call
        self._closed = False
        self._queue: list[Pending] = []
        self._sending: asyncio.Task[None] | None = None

    def execute(self, op: str, key: str, token: str, milliseconds: int) -> asyncio.Future[Any]:
        """The reply to one operation; it fails with its own error, or its batch's (RedisError, OSError).

        Raises ValueError for an operation the script could not read (a programmer's error)."""
        return self.submit(op, key, line(op, token, milliseconds))

    def submit(self, op: str, key: str, text: bytes) -> asyncio.Future[Any]:
        """`execute`, for the operation `text` says: a line made by `redis_script.line`, or made once by
        it and completed with a token it would accept (the store's claims and commits: no check per call)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        try:
            encoded = key.encode()
        except UnicodeEncodeError as exc:  # this key only: never its batch
            _fail(reply, DataError(f"dedupe {op}: the key is not valid UTF-8"), cause=exc)
            return reply
        if self._closed:
            _fail(reply, RedisError("the dedupe store is stopping"))
            return reply
        self._queue.append((encoded, text, reply))
        if self._sending is None:
            # an empty context: it serves every caller, so none of their spans (nor log trace ids) is its
            self._sending = loop.create_task(self._send_all(), context=contextvars.Context())
        return reply

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
                if self._queue:  # queued while that batch was in flight: under load, let more join
                    for _ in range(self._turns):
                        await asyncio.sleep(0)
        finally:
            self._sending = None

    async def _send(self, batch: list[Pending]) -> None:
        try:
            if self._by_slot:
                await self._send_by_slot(batch)
                return
            try:
                _answer(batch, await self._call(batch))
            except ClusterCrossSlotError:  # refused before running anything
                self._by_slot = True
                logger.warning("dedupe store: the server is in cluster mode; one script call per hash slot from now on")
                await self._send_by_slot(batch)
        except (RedisError, OSError) as exc:
            _fail_all(batch, exc)
            if isinstance(exc, DEMOTED):  # demoted: connect to the address again (the new master, soon)
                await forget_connections(self._client)
        except Exception as exc:  # a bug: each caller still gets a store error, and the next batch is sent
            logger.exception("dedupe store: a batch failed unexpectedly")
            _fail_all(batch, RedisError(f"the dedupe batch failed: {type(exc).__name__}"), cause=exc)
        except asyncio.CancelledError:
            _fail_all(batch, RedisError("the dedupe store is stopping"))
            raise

    async def _call(self, batch: Sequence[Pending]) -> Any:
        keys = [key for key, _, _ in batch]
        lines = b"".join([text for _, text, _ in batch])
        if self._by_digest:
            try:
                return await self._client.evalsha(DIGEST, len(keys), *keys, lines)
            except NoScriptError:
                pass  # this server has not seen it yet: EVAL runs it and caches it
            except NoPermissionError:
                self._by_digest = False
        return await self._client.eval(SCRIPT, len(keys), *keys, lines)

    async def _send_by_slot(self, batch: list[Pending]) -> None:
        slots: dict[int, list[Pending]] = {}
        for pending in batch:  # the order of one key's operations stays as issued
            slots.setdefault(key_slot(pending[0]), []).append(pending)
        groups = list(slots.values())
        pipe = self._client.pipeline(transaction=False)
        for group in groups:
            keys, lines = [key for key, _, _ in group], b"".join([text for _, text, _ in group])
            if self._by_digest:
                pipe.evalsha(DIGEST, len(keys), *keys, lines)
            else:
                pipe.eval(SCRIPT, len(keys), *keys, lines)
        answers = await pipe.execute(raise_on_error=False)
        demoted = False
        for group, first in zip(groups, answers, strict=True):
            answer = first
            if isinstance(first, NoScriptError | NoPermissionError):  # ran nothing: again, alone
                answer = await _settled(self._call(group))
            if isinstance(answer, Exception):
                demoted = demoted or isinstance(answer, DEMOTED)
                _fail_all(group, answer)
            else:
                _answer(group, answer)
        if demoted:
            await forget_connections(self._client)

    async def close(self) -> None:
        """Stop sending; every operation not answered yet fails with RedisError."""
        self._closed = True
        sending = self._sending
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        queued, self._queue = self._queue, []  # a task cancelled before it ran never took them
        _fail_all(queued, RedisError("the dedupe store is stopping"))


async def _settled(call: Any) -> Any:
    try:
        return await call
    except RedisError as exc:
        return exc


def _answer(batch: Sequence[Pending], answer: object) -> None:
    for (_, _, reply), result in zip(batch, replies(answer, len(batch)), strict=True):
        if isinstance(result, RedisError):
            _fail(reply, result)
        elif not reply.done():  # else its caller stopped waiting
            reply.set_result(result)


def _fail_all(batch: Sequence[Pending], exc: BaseException, *, cause: BaseException | None = None) -> None:
    for _, _, reply in batch:
        _fail(reply, exc, cause=cause)


def _fail(reply: asyncio.Future[Any], exc: BaseException, *, cause: BaseException | None = None) -> None:
    if cause is not None:
        exc.__cause__ = cause
    if not reply.done():
        reply.set_exception(exc)
        reply.exception()  # retrieved: a caller that gave up waiting must not leave it unreported
