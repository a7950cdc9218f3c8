"""Delivery-id dedupe shared by every replica, on Redis.

Same semantics as MemoryDedupeStore, across processes:

Every operation goes through one Batcher (relay.dedupe.redis_batch): the operations of concurrent
deliveries share one script call, and one round trip, and each gets its own reply or error.

- `claim`: sets `inflight:<token>` with a lease (PX) if the key is absent, and otherwise answers what
  is there: `done`, or another attempt's in-flight mark.
- `commit`: the record is in Kafka, so the key becomes `done` for the dedupe TTL, unconditionally.
- `release`: deletes the key only if it still holds this attempt's token.
- `extend`: lengthens this attempt's lease while the producer still holds the record.

A replica that dies while holding a claim blocks that delivery only until the lease expires; the
sender's next retry after that, if it has one left, publishes it (docs/dedupe.md: MyTPE's may not). So
does a claim whose answer was lost (a timeout, a dropped connection: it may have been set), or a release
that failed, except for a retry on this process, which finds its own token (relay.dedupe.lost_claims),
releases it and claims again. A claim cancelled on its way is given back (`_abandon`).
A claim that redis-py itself sent again after losing its answer (a URL with `retry_on_timeout=true`; the
relay's clients do not retry otherwise) finds its own token and is the attempt's claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.dedupe.connect import RedisConnection, RedisTls, redis_connection
from relay.dedupe.lost_claims import LostClaims
from relay.dedupe.redis_batch import Batcher
from relay.dedupe.redis_script import line
from relay.errors import DedupeUnavailable, Unavailable
from relay.settings import STORE_TIMEOUT_SECONDS
from relay.types import Claim

logger = logging.getLogger(__name__)

DONE = "done"


class RedisDedupeStore:
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        ttl: float,
        lease: float,
        timeout: float = STORE_TIMEOUT_SECONDS,
        tls: RedisTls | None = None,
        remember_lost: bool = True,
        hold: float = 300.0,
    ) -> None:
        """`hold`: how long an attempt of this process may hold a claim at most (the producer's bounds): past it,
        a token still held (`_tokens`) is taken as one an attempt never gave back, and no longer answers a retry
        `in_flight` (`claim`)."""
        if ttl < 0.001 or lease < 0.001:
            raise ValueError(f"ttl ({ttl}) and lease ({lease}) must be at least 1 ms")
        self._url = url
        self._tls = tls or RedisTls()
        self._prefix = f"{namespace}:dedupe:"  # each key's
        self._ttl_ms = int(ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self._timeout = timeout
        self._connection: RedisConnection | None = None
        self._redis: Redis | None = None
        self._batcher: Batcher | None = None
        self._pinging: asyncio.Future[bool] | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # each attempt's token, and when it claimed (monotonic)
        self._covers: dict[str, str] = {}
        """A retry's token whose claim this process refused `in_flight` while an attempt of its own still held the
        key: its mark covers that attempt on every replica, and goes with that attempt's release."""
        self._hold = hold
        # Each claim's token: this store's random prefix and a serial number, unique without a draw per claim.
        self._token_prefix = f"inflight:{secrets.token_hex(8)}-"
        self._claims_made = 0
        # The hot operations' lines, checked once (`line`): a claim's is this head, its serial number and a
        # newline (hex digits: one line, as `line` requires); a commit's is the same for every key.
        self._claim_head = line("claim", self._token_prefix, self._lease_ms).decode().removesuffix("\n")
        self._commit_line = line("commit", "", self._ttl_ms)
        self._lost = LostClaims(lease) if remember_lost else None  # None: fail-open publishes such attempts

    def _send(self, op: str, key: str, token: str, milliseconds: int) -> asyncio.Future[object]:
        return self._send_line(op, key, line(op, token, milliseconds))

    def _send_line(self, op: str, key: str, text: bytes) -> asyncio.Future[object]:
        if self._batcher is None:
            raise Unavailable("shutting_down", "the dedupe store is stopped")
        return self._batcher.submit(op, self._prefix + key, text)

    async def start(self) -> None:
        self._connection = redis_connection(self._url, tls=self._tls, timeout=self._timeout)
        self._redis = self._connection.client
        self._batcher = Batcher(self._redis)

    async def stop(self) -> None:
        connection, self._connection, self._redis = self._connection, None, None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()
        if connection is not None:
            await connection.aclose()

    async def ping(self) -> bool:
        """Pings at once share one (one connection: a pool of 2 keeps the other for the batches)."""
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.ensure_future(_ping(self._redis, self._timeout))
        return await asyncio.shield(self._pinging)

    async def claim(self, key: str, *, wait: float) -> Claim:
        self._claims_made = made = self._claims_made + 1
        serial = f"{made:x}"
        token = self._token_prefix + serial
        text = f"{self._claim_head}{serial}\n".encode()  # line("claim", token, lease), made without its checks
        deadline = time.monotonic() + wait
        pause = 0.02
        while True:
            try:
                current = await self._send_line("claim", key, text)
            except asyncio.CancelledError:  # it may be set, and nobody publishes under it: given back
                _abandon(self._lost, key, token, partial(self._send, "release", key, token, 0))
                raise
            except (RedisError, OSError) as exc:  # it may have been set: a timeout does not say
                if self._lost is not None:
                    self._lost.add(key, token)
                else:  # failing open, the attempt publishes under this mark if it was set: it is its own
                    self._tokens[key] = (token, time.monotonic())
                    _ATTEMPT.set((key, token))
                raise DedupeUnavailable("claim", exc) from exc
            if current in ("new", token):  # its own token: this claim ran already, its reply lost, and was resent
                held = self._tokens.get(key)
                if held is not None and time.monotonic() - held[1] < self._hold:
                    # An attempt of this process still holds it (its lease ran out meanwhile), and it may still land:
                    # this claim does not take the key's place; the mark it set stays for its lease, covering that
                    # attempt on every replica. Past the hold it does, and each attempt acts with its own token.
                    self._covers[key] = token
                    raise Unavailable("in_flight", "the same delivery is being published", retry_after=1)
                self._tokens[key] = (token, time.monotonic())  # (redis-py resends on a timeout when the URL
                _ATTEMPT.set((key, token))  # says retry_on_timeout)
                return Claim.NEW
            if current == DONE:
                return Claim.DUPLICATE
            if isinstance(current, str) and self._lost is not None and self._lost.take(key, current):
                # our own lost claim, and failing closed: nobody publishes it
                await self._release_lost(key, current)
                continue
            if time.monotonic() + pause > deadline:
                raise Unavailable("in_flight", "the same delivery is being published", retry_after=1)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _release_lost(self, key: str, token: str) -> None:
        try:
            await self._send("release", key, token, 0)
        except (RedisError, OSError) as exc:
            if self._lost is not None:  # the mark may still be there: the next retry recognises it again
                self._lost.add(key, token)
            raise DedupeUnavailable("claim", exc) from exc

    async def commit(self, key: str) -> None:
        try:
            await self._queue_commit(key)
        except (RedisError, OSError) as exc:
            raise DedupeUnavailable("commit", exc) from exc

    def commit_soon(self, key: str, done: Callable[[BaseException | None], None]) -> asyncio.Future[object]:
        """`commit` without a coroutine or a task: the batch's reply future, and `done` called from it."""
        self._tokens.pop(key, None)  # `_queue_commit`, inlined: once per webhook
        if self._covers:  # a commit replaces a cover's mark too
            self._covers.pop(key, None)
        if (mine := _ATTEMPT.get()) is not None and mine[0] == key:  # its claim, the last this task took: done
            _ATTEMPT.set(None)
        sent = self._send_line("commit", key, self._commit_line)
        sent.add_done_callback(partial(_landed, done))
        return sent

    def _queue_commit(self, key: str) -> asyncio.Future[object]:
        self._tokens.pop(key, None)  # done whatever the attempt held: no token is needed any more
        self._covers.pop(key, None)
        if (mine := _ATTEMPT.get()) is not None and mine[0] == key:
            _ATTEMPT.set(None)
        return self._send_line("commit", key, self._commit_line)

    def _own(self, key: str) -> str | None:
        """The token of the attempt asking: the one its claim took in this task (a request's, or a late
        acknowledgement's, whose task copies the request's context), else the key's latest. Past the hold a
        retry's claim takes the key's place in `_tokens`; the first attempt still acts on its own mark only."""
        mine = _ATTEMPT.get()
        if mine is not None and mine[0] == key and mine[1].startswith(self._token_prefix):  # this store's claim
            return mine[1]
        held = self._tokens.get(key)
        return None if held is None else held[0]

    async def release(self, key: str) -> None:
        token = self._own(key)
        held = self._tokens.get(key)
        cover = None
        if held is not None and held[0] == token:
            del self._tokens[key]
            cover = self._covers.pop(key, None)  # what covered this attempt goes with it (never left behind)
        if (mine := _ATTEMPT.get()) is not None and mine[0] == key:
            _ATTEMPT.set(None)
        if token is None:  # nothing this attempt holds: never claimed here, or committed already
            return
        try:
            released = await self._send("release", key, token, 0)
        except (RedisError, OSError) as exc:
            if self._lost is not None:  # the mark may still be there: this process's next claim takes it back
                self._lost.add(key, token)
            raise DedupeUnavailable("release", exc) from exc
        if released == "0":  # the mark is gone, or another's (a retry's, set after this one's lease ran out)
            logger.warning("dedupe: the claim on %s was no longer this attempt's; nothing released", key)
        if cover is not None:  # a retry on any replica publishes now; failing, the cover's own lease ends it
            with contextlib.suppress(RedisError, OSError, Unavailable):  # Unavailable: the store stopped meanwhile
                await self._send("release", key, cover, 0)

    async def extend(self, key: str, seconds: float) -> bool:
        token = self._own(key)
        if token is None:
            return False
        try:
            extended = await self._send("extend", key, token, int(seconds * 1000))
        except (RedisError, OSError) as exc:
            raise DedupeUnavailable("extend", exc) from exc
        if extended == "0":  # the mark is gone (or another's): its lease ran out while Kafka held the record
            logger.warning(
                "dedupe: the claim on %s had ended before its extension; a retry on another replica may publish"
                " it again",
                key,
            )
            return False
        return True


_ATTEMPT: ContextVar[tuple[str, str] | None] = ContextVar("dedupe_attempt", default=None)
"""The last claim this task took (its key and token): one, so a task relaying many (the parking attendant's) holds
no more."""


def _landed(done: Callable[[BaseException | None], None], sent: asyncio.Future[object]) -> None:
    if sent.cancelled():  # its caller stopped waiting: the operation may still run
        done(asyncio.CancelledError())
        return
    exc = sent.exception()  # the batcher fails a reply with RedisError or OSError only
    done(None if exc is None else DedupeUnavailable("commit", exc if isinstance(exc, Exception) else RedisError()))


def _abandon(lost: LostClaims | None, key: str, token: str, release: Callable[[], asyncio.Future[object]]) -> None:
    """A claim cancelled on its way (docs/dedupe.md): its release queued behind it (the batcher keeps their
    order), unawaited, and failing closed its token remembered as lost, in case that release fails too."""
    if lost is not None:
        lost.add(key, token)
    with contextlib.suppress(Unavailable):  # the store stopped: the mark's lease ends it
        release().add_done_callback(_quiet)


async def _ping(client: Redis | None, timeout: float) -> bool:
    if client is None:  # stopped
        return False
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (RedisError, OSError, TimeoutError):
        return False


def _quiet(sent: asyncio.Future[object]) -> None:
    """An unawaited release's reply: read, so that a failure is not logged as never retrieved (its lease ends it)."""
    if not sent.cancelled():
        sent.exception()
