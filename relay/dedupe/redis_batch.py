"""Dedupe operations issued while a round trip is under way go out together, as one Lua script call.

redis-py spends tens of CPU microseconds on every command, in a pipeline too: packing, a read with its
own timeout, reply callbacks (docs/performance.md). The store's operations (claim, commit, release,
extend) from concurrent deliveries are queued instead. Up to MAX_IN_FLIGHT batches are in flight at
once, each on its own connection from the client's pool; an operation issued while fewer are out
leaves at once, in a batch of its own and what was queued with it, and otherwise waits for the first
batch to be answered and goes with the next. So batches grow with the load, and at low load an
operation leaves at once. A batch is one call of relay.dedupe.redis_script.SCRIPT, which runs its
operations in the order issued, each on its own, and answers each its own reply or error.

MAX_IN_FLIGHT is 2. With one, an operation issued while a batch was out waited for that batch's answer
and then its own round trip: near capacity, twice the round trip. With two, it leaves at once while
the first is out, so the client packs and sends one batch while Redis runs or answers the other, the
one overlap there is: Redis runs scripts one at a time, so more batches out would only wait at the
server, and every extra connection splits the load into more, smaller batches, and redis-py's cost is
per call.

Order. One key's operations are sent in the order issued: an operation whose key is in a batch in
flight waits for that batch's answer or error, and goes with the next batch (as does every later one
of that key). So they run in that order, unless that batch failed with a timeout or a lost connection:
its call may still run at the server afterwards (so it could with one batch in flight). Operations of
different keys in two batches in flight run in either order at the server. The store needs no more
(redis_store.py): a delivery attempt issues its extend, commit or release only after its claim's
answer, one after the other, and each carries the attempt's own token, so it touches only its own
mark; attempts of one delivery id on two replicas already reach Redis in any order, and a script call
is atomic, so exactly one claim is new, whichever runs first.

Each caller gets its own outcome. An operation's error (WRONGTYPE, OOM under `noeviction`) fails that
operation only. An error for the whole call fails every operation of it and of no other batch: a lost
connection or a timeout (the script may have run: the outcome is unknown), or a refusal that ran
nothing. A key redis-py cannot encode fails its own operation before batching. The script goes by its
digest (EVALSHA), and by its text (EVAL) when the server does not have it (a restart, a failover) or the
ACL user may not call EVALSHA (from then on, always by text). A cluster-mode server refuses one call
over keys of several hash slots (CROSSSLOT); from the first refusal on, a batch goes as one call per
slot, in one pipeline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, DataError, NoPermissionError, NoScriptError, RedisError

from relay.dedupe.redis_script import DIGEST, SCRIPT, line, replies

logger = logging.getLogger(__name__)

Pending = tuple[bytes, bytes, asyncio.Future[Any]]  # key, line, the caller's reply
MAX_IN_FLIGHT = 2  # batches out at once, one connection each (the module's docstring says why 2)


class Batcher:
    """Sends the operations handed to `execute` in batches, up to MAX_IN_FLIGHT at once, one key's in order."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._by_digest = True  # false once the ACL user was refused EVALSHA
        self._by_slot = False  # true once the server refused keys of several slots in one call
        self._closed = False
        self._queue: list[Pending] = []
        self._senders: set[asyncio.Task[None]] = set()  # each sends one batch at a time
        self._starting = False  # a sender is started and has not taken its batch yet
        self._busy: set[bytes] = set()  # the keys of the batches in flight

    def execute(self, op: str, key: str, token: str, milliseconds: int) -> asyncio.Future[Any]:
        """The reply to one operation; it fails with its own error, or its batch's (RedisError, OSError).

        Raises ValueError for an operation the script could not read (a programmer's error)."""
        text = line(op, token, milliseconds)
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
        if not self._starting and len(self._senders) < MAX_IN_FLIGHT:
            self._starting = True
            # an empty context: it serves every caller, so none of their spans (nor log trace ids) is its
            self._senders.add(loop.create_task(self._send_all(), context=contextvars.Context()))
        return reply

    async def _send_all(self) -> None:
        self._starting = False
        try:
            batch = self._take()
            while batch:
                keys = {key for key, _, _ in batch}
                self._busy |= keys  # disjoint from the other batch's: _take held back any of them
                try:
                    await self._send(batch)
                finally:
                    self._busy -= keys
                batch = self._take()  # what was queued meanwhile, with what waited for these keys
        finally:
            sender = asyncio.current_task()
            if sender is not None:  # at once, not by a done callback: execute counts the senders
                self._senders.discard(sender)

    def _take(self) -> list[Pending]:
        """The queue, but for the operations on a key in flight: they stay queued, in order, for the batch
        after its answer (the sender of that batch takes them then)."""
        queued, self._queue = self._queue, []
        if not self._busy:
            return queued
        batch: list[Pending] = []
        for pending in queued:
            (self._queue if pending[0] in self._busy else batch).append(pending)
        return batch

    async def _send(self, batch: list[Pending]) -> None:
        try:
            if self._by_slot:
                await self._send_by_slot(batch)
                return
            try:
                _answer(batch, await self._call(batch))
            except ClusterCrossSlotError:  # refused before running anything
                if not self._by_slot:  # once, though the batch in flight beside it may be refused too
                    logger.warning(
                        "dedupe store: the server is in cluster mode; one script call per hash slot from now on"
                    )
                self._by_slot = True
                await self._send_by_slot(batch)
        except (RedisError, OSError) as exc:
            _fail_all(batch, exc)
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
        for group, first in zip(groups, answers, strict=True):
            answer = first
            if isinstance(first, NoScriptError | NoPermissionError):  # ran nothing: again, alone
                answer = await _settled(self._call(group))
            if isinstance(answer, Exception):
                _fail_all(group, answer)
            else:
                _answer(group, answer)

    async def close(self) -> None:
        """Stop sending; every batch in flight is cancelled, and every operation not answered yet fails
        with RedisError."""
        self._closed = True
        senders = list(self._senders)
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        self._senders.clear()  # a task cancelled before it ran never removed itself
        self._starting = False
        queued, self._queue = self._queue, []  # held, or never taken
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
