"""Dedupe operations issued while a round trip is under way go out together, as one Lua script call.

redis-py spends tens of CPU microseconds on every command, in a pipeline too: packing, a read with its
own timeout, reply callbacks (docs/performance.md). The store's operations (claim, commit, release,
extend) from concurrent deliveries are queued instead; one batch is in flight at a time, and the next
holds what was queued meanwhile, so batches grow with the load, and at low load an operation leaves at
once. A batch is one EVAL of SCRIPT: Redis runs its operations atomically, in the order issued, and
answers one reply each.

A batch succeeds or fails as one: an error reply (READONLY after a failover, OOM under `noeviction`)
or a lost connection fails every operation of it, each as it would have failed alone, and the callers
treat it as the store being unavailable. A batch is sent by the script's digest (EVALSHA), and by its
text (EVAL) when the server does not have it (a restart, a failover: EVAL caches it again) or the ACL
user may not call EVALSHA (from then on, always by text). Neither refusal runs anything, so the batch
runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, NoScriptError, RedisError

# KEYS[i] is the i-th operation's key, and line i of ARGV[1] the operation: its name, a duration in
# milliseconds (the lease, the TTL, or the extension) and the attempt's token. The replies come back
# as one string, one line each. (One argument and one reply for the whole batch: redis-py's cost is per
# argument and per reply element, and its packing copies the command once for every argument.)
# - claim: set the token with the lease if the key is absent and answer 'new', else answer what is there;
# - commit: the record is in Kafka: 'done' for the TTL, unconditionally;
# - release, extend: delete the key, or lengthen its lease, only while it still holds this token.
SCRIPT = """
local replies = {}
local i = 0
for op, ms, token in string.gmatch(ARGV[1], '(%a+) (%d+) ([^\\n]*)\\n') do
  i = i + 1
  local key = KEYS[i]
  local reply = '0'
  if op == 'claim' then
    reply = redis.call('GET', key)
    if not reply then
      redis.call('SET', key, token, 'PX', ms)
      reply = 'new'
    end
  elseif op == 'commit' then
    redis.call('SET', key, 'done', 'PX', ms)
    reply = '1'
  elseif redis.call('GET', key) == token then
    if op == 'release' then
      reply = tostring(redis.call('DEL', key))
    else
      reply = tostring(redis.call('PEXPIRE', key, ms))
    end
  end
  replies[i] = reply
end
return table.concat(replies, '\\n')
"""
DIGEST = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()  # Redis's name for the script
OPERATIONS = frozenset({"claim", "commit", "release", "extend"})

Operation = tuple[str, str, str, int]  # name, key, token, milliseconds


class Batcher:
    """Sends the operations handed to `execute` in batches, one batch at a time, in the order given."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._by_digest = True  # false once the ACL user was refused EVALSHA
        self._queue: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._sending: asyncio.Task[None] | None = None

    def execute(self, op: str, key: str, token: str, milliseconds: int) -> asyncio.Future[Any]:
        """The reply to one operation; it fails with its batch's error (RedisError, OSError)."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown dedupe operation {op!r}")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._queue.append(((op, key, token, milliseconds), reply))
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

    async def _send(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        keys = [key for (_, key, _, _), _ in batch]
        lines = "".join([f"{op} {milliseconds} {token}\n" for (op, _, token, milliseconds), _ in batch])
        try:
            answer = await self._run(keys, lines)
            results = answer.split("\n") if isinstance(answer, str) else []
            if len(results) != len(batch):
                raise RedisError(f"the dedupe script answered {len(results)} replies to {len(batch)} operations")
        except Exception as exc:  # any error reaches every caller of the batch
            for _, reply in batch:
                _fail(reply, exc)
            return
        except asyncio.CancelledError:
            for _, reply in batch:
                _fail(reply, RedisError("the dedupe store is stopping"))
            raise
        for (_, reply), result in zip(batch, results, strict=True):
            if not reply.done():  # else its caller stopped waiting
                reply.set_result(result)

    async def _run(self, keys: list[str], lines: str) -> Any:
        if self._by_digest:
            try:
                return await self._client.evalsha(DIGEST, len(keys), *keys, lines)
            except NoScriptError:
                pass  # this server has not seen it yet: EVAL runs it and caches it
            except NoPermissionError:
                self._by_digest = False
        return await self._client.eval(SCRIPT, len(keys), *keys, lines)

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
