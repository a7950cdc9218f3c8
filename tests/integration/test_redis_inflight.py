"""Two batches of dedupe operations in flight at once, each on its own connection, to a real redis-server.

`CLIENT PAUSE … WRITE` holds every script call at the server (EVAL/EVALSHA wait whatever they do), so a
batch sent stays in flight until `CLIENT UNPAUSE`; the server counts each held call as a blocked client.
Each test has its own redis-server: a pause stops every client of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from relay.dedupe.redis_batch import MAX_IN_FLIGHT, Batcher
from relay.dedupe.redis_store import RedisDedupeStore
from relay.errors import Unavailable
from relay.types import Claim
from tests.servers import LocalRedis

pytestmark = pytest.mark.integration

NAME = "dedupe-under-test"  # the batcher's connections, as CLIENT LIST names them
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request")  # a caller's context (its span)


@asynccontextmanager
async def _server(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[LocalRedis, Redis]]:
    with LocalRedis(tmp_path / "redis", extra=list(extra)) as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        try:
            yield server, admin
        finally:
            await admin.client_unpause()
            await admin.aclose()


def _client(server: LocalRedis, **options: Any) -> Redis:
    """The batcher's client; its reads wait out any hold of these tests (redis-py's default is 5 s, then a resend)."""
    return Redis.from_url(server.url, decode_responses=True, client_name=NAME, socket_timeout=60, **options)


@asynccontextmanager
async def _paused(admin: Redis) -> AsyncIterator[None]:
    """Every script call that arrives meanwhile waits at the server, in the order it arrived."""
    await admin.client_pause(60_000, all=False)
    try:
        yield
    finally:
        await admin.client_unpause()


async def _held(admin: Redis, count: int, deadline: float = 10) -> int:
    """How many calls the server holds, once it holds `count` of them (or the deadline passed)."""
    held = 0
    for _ in range(int(deadline / 0.02)):
        held = int((await admin.info("clients"))["blocked_clients"])
        if held >= count:
            break
        await asyncio.sleep(0.02)
    return held


async def _script_calls(admin: Redis) -> int:
    stats: dict[str, dict[str, Any]] = await admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def _connections(admin: Redis) -> list[dict[str, str]]:
    return [client for client in await admin.client_list() if client.get("name") == NAME]


def _key() -> str:
    return f"test-{uuid.uuid4().hex}"


async def test_an_operation_issued_while_a_batch_is_out_leaves_at_once_on_a_second_connection(tmp_path: Path) -> None:
    """One batch was in flight at a time: a claim issued while one was out waited for its answer, then went
    (at 76% of capacity, each claim waited for the batch ahead of it and then its own). A third, issued
    while two are out, waits for a connection to come back: the bound."""
    async with _server(tmp_path) as (server, admin):
        client = _client(server)
        batcher = Batcher(client)
        key = _key()
        try:
            assert await batcher.execute("claim", f"{key}-warm", "inflight:w", 30_000) == "new"  # loads the script
            async with _paused(admin):
                first = batcher.execute("claim", f"{key}-1", "inflight:a", 30_000)
                assert await _held(admin, 1) == 1
                second = batcher.execute("claim", f"{key}-2", "inflight:b", 30_000)
                held = await _held(admin, 2)
                third = batcher.execute("claim", f"{key}-3", "inflight:c", 30_000)
            results = list(await asyncio.wait_for(asyncio.gather(first, second, third), 10))
            connections = await _connections(admin)
        finally:
            await batcher.close()
            await client.aclose()
    assert held == 2, f"the server held {held} call(s): the second operation waited for the first batch's answer"
    assert results == ["new", "new", "new"]
    assert len(connections) == MAX_IN_FLIGHT == 2, connections


async def test_an_operation_on_a_key_in_flight_waits_for_that_batch_and_keeps_the_order_issued(tmp_path: Path) -> None:
    """Two deliveries of one id, the second claimed while the first's batch is out: that claim waits for the
    batch's answer, so one key's operations run in the order issued; another key's operation leaves at once."""
    async with _server(tmp_path) as (server, admin):
        client = _client(server)
        batcher = Batcher(client)
        key = _key()
        try:
            assert await batcher.execute("claim", f"{key}-warm", "inflight:w", 30_000) == "new"
            before = await _script_calls(admin)
            async with _paused(admin):
                first = batcher.execute("claim", key, "inflight:a", 30_000)
                assert await _held(admin, 1) == 1
                same = batcher.execute("claim", key, "inflight:b", 30_000)
                other = batcher.execute("claim", f"{key}-2", "inflight:c", 30_000)
                held = await _held(admin, 2)
            results = list(await asyncio.wait_for(asyncio.gather(first, same, other), 10))
            calls = await _script_calls(admin) - before
        finally:
            await batcher.close()
            await client.aclose()
    assert held == 2, f"the server held {held} call(s): the other key's claim did not leave at once"
    assert results == ["new", "inflight:a", "new"], results
    assert calls == 3, f"{calls} script calls: the second claim of {key} went beside the batch holding the first"


async def test_with_two_batches_out_each_operation_and_each_call_keeps_its_own_outcome(tmp_path: Path) -> None:
    """An operation's error fails it alone; a whole call's error (its connection killed) fails every operation
    of that call and none of the other batch in flight."""
    async with _server(tmp_path) as (server, admin):
        client = _client(server, retry=Retry(NoBackoff(), 0))  # a resend would hide the lost call
        batcher = Batcher(client)
        key = _key()
        try:
            await admin.rpush(f"{key}-list", "not a dedupe mark")
            assert await batcher.execute("claim", f"{key}-warm", "inflight:w", 30_000) == "new"
            async with _paused(admin):
                killed = [batcher.execute("claim", f"{key}-k{n}", "inflight:a", 30_000) for n in range(3)]
                assert await _held(admin, 1) == 1
                served = [
                    batcher.execute("claim", f"{key}-list", "inflight:b", 30_000),
                    batcher.execute("claim", f"{key}-s", "inflight:b", 30_000),
                    batcher.execute("commit", f"{key}-warm", "", 60_000),
                ]
                assert await _held(admin, 2) == 2
                first = min(await _connections(admin), key=lambda client: int(client["id"]))  # the warm one
                await admin.client_kill_filter(_id=first["id"])
            lost = await asyncio.wait_for(asyncio.gather(*killed, return_exceptions=True), 10)
            answered = await asyncio.wait_for(asyncio.gather(*served, return_exceptions=True), 10)
            after = await batcher.execute("claim", f"{key}-k0", "inflight:c", 30_000)
        finally:
            await batcher.close()
            await client.aclose()
    assert all(isinstance(result, RedisConnectionError) for result in lost), lost
    assert isinstance(answered[0], ResponseError) and "WRONGTYPE" in str(answered[0]), answered
    assert answered[1:] == ["new", "1"], answered
    assert after == "new", "the killed call ran nothing (the server held it), and the batcher still sends"


async def test_close_with_two_batches_out_fails_every_waiter_and_leaves_nothing_pending(tmp_path: Path) -> None:
    async with _server(tmp_path) as (server, admin):
        client = _client(server)
        batcher = Batcher(client)
        key = _key()
        try:
            assert await batcher.execute("claim", f"{key}-warm", "inflight:w", 30_000) == "new"
            async with _paused(admin):
                out = [batcher.execute("claim", f"{key}-1", "inflight:a", 30_000)]
                assert await _held(admin, 1) == 1
                out.append(batcher.execute("claim", f"{key}-2", "inflight:b", 30_000))
                assert await _held(admin, 2) == 2
                queued = [
                    batcher.execute("claim", f"{key}-1", "inflight:c", 30_000),  # its key is in flight
                    batcher.execute("claim", f"{key}-3", "inflight:d", 30_000),  # no connection free
                ]
                await asyncio.wait_for(batcher.close(), 10)
                senders = list(batcher._senders)
            results = await asyncio.wait_for(asyncio.gather(*out, *queued, return_exceptions=True), 10)
            after = batcher.execute("claim", f"{key}-4", "inflight:e", 30_000)
        finally:
            await client.aclose()
    assert all(type(result) is RedisError for result in results), results
    assert senders == [] and batcher._queue == [] and batcher._busy == set()
    assert isinstance(after.exception(), RedisError)


async def test_each_sender_runs_in_an_empty_context_not_the_request_that_started_it(tmp_path: Path) -> None:
    """A sender serves every caller: it must not carry the span (nor the log trace id) of the request whose
    operation started it, the second sender no more than the first."""
    async with _server(tmp_path) as (server, admin):
        client = _client(server)
        seen: list[str] = []
        evalsha = client.evalsha

        async def recording(*args: Any) -> Any:
            seen.append(REQUEST.get("none"))
            return await evalsha(*args)

        client.evalsha = recording  # type: ignore[method-assign,assignment]
        batcher = Batcher(client)

        async def request(name: str, key: str) -> Any:
            REQUEST.set(name)
            return await batcher.execute("claim", key, "inflight:a", 30_000)

        try:
            assert await asyncio.create_task(request("warm", f"{_key()}-warm")) == "new"
            async with _paused(admin):
                first = asyncio.create_task(request("first", _key()))
                assert await _held(admin, 1) == 1
                second = asyncio.create_task(request("second", _key()))
                assert await _held(admin, 2) == 2
            results = list(await asyncio.wait_for(asyncio.gather(first, second), 10))
        finally:
            await batcher.close()
            await client.aclose()
    assert results == ["new", "new"]
    assert seen == ["none", "none", "none"], seen


async def _claim(store: RedisDedupeStore, key: str, yields: int) -> Claim | str:
    for _ in range(yields):  # so the claims of one round land in one batch, or in two
        await asyncio.sleep(0)
    try:
        return await store.claim(key, wait=0)
    except Unavailable as exc:
        return exc.cause


async def test_concurrent_claims_of_one_delivery_in_separate_batches_give_exactly_one_new(redis: LocalRedis) -> None:
    """Two deliveries of one id on one replica (in one batch, or one waiting for the other's), and a third on
    another replica (its own connection, in either order at the server): one is new, the others in flight."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    here = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30)
    there = RedisDedupeStore(redis.url, namespace=namespace, ttl=60, lease=30)
    await here.start()
    await there.start()
    outcomes: list[list[Claim | str]] = []
    try:
        for n in range(200):
            claims: list[Awaitable[Claim | str]] = [
                _claim(here, f"d{n}", n % 3),
                _claim(here, f"other{n}", 1),
                _claim(here, f"d{n}", (n // 3) % 3),
                _claim(there, f"d{n}", n % 2),
            ]
            outcomes.append(list(await asyncio.wait_for(asyncio.gather(*claims), 10)))
    finally:
        await here.stop()
        await there.stop()
    for outcome in outcomes:
        of_one = [outcome[0], outcome[2], outcome[3]]
        assert of_one.count(Claim.NEW) == 1 and of_one.count("in_flight") == 2, outcome
        assert outcome[1] is Claim.NEW


async def _two_batches_out(admin: Redis, batcher: Batcher, key: str) -> list[Any]:
    """Two batches over several keys each, sent while the server holds script calls, then answered."""
    async with _paused(admin):
        first = [batcher.execute("claim", f"{key}-a{n}", "inflight:a", 30_000) for n in range(8)]
        assert await _held(admin, 1) >= 1
        second = [batcher.execute("claim", f"{key}-b{n}", "inflight:b", 30_000) for n in range(8)]
        assert await _held(admin, 2) >= 2
    return await asyncio.wait_for(asyncio.gather(*first, *second, return_exceptions=True), 10)


async def test_two_batches_out_to_a_server_that_lost_the_script_both_go_by_text(tmp_path: Path) -> None:
    async with _server(tmp_path) as (server, admin):
        client = _client(server)
        batcher = Batcher(client)
        try:
            assert await batcher.execute("claim", f"{_key()}-warm", "inflight:w", 30_000) == "new"
            await admin.script_flush()  # a restart or a failover
            results = await _two_batches_out(admin, batcher, _key())
        finally:
            await batcher.close()
            await client.aclose()
    assert results == ["new"] * 16, results


async def test_two_batches_out_to_a_cluster_mode_server_each_go_one_call_per_slot(tmp_path: Path) -> None:
    extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"))
    async with _server(tmp_path, *extra) as (server, admin):
        await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        await _until(lambda: admin.execute_command("CLUSTER", "INFO"), "cluster_state:ok")  # type: ignore[no-untyped-call]
        client = _client(server)
        batcher = Batcher(client)
        try:
            assert await batcher.execute("claim", f"{_key()}-warm", "inflight:w", 30_000) == "new"  # one slot
            by_slot = await _two_batches_out(admin, batcher, _key())  # both refused CROSSSLOT, both split
            await admin.script_flush()
            by_text = await _two_batches_out(admin, batcher, _key())  # and each call per slot, by text
        finally:
            await batcher.close()
            await client.aclose()
    assert by_slot == ["new"] * 16, by_slot
    assert by_text == ["new"] * 16, by_text


async def _until(read: Callable[[], Awaitable[str]], text: str) -> None:
    for _ in range(100):
        if text in await read():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {text}")
