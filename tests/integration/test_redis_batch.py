"""Dedupe operations of concurrent deliveries share one script call to a real redis-server, each with its own reply."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from relay.dedupe.redis_batch import Batcher
from relay.dedupe.redis_store import RedisDedupeStore
from relay.types import Claim
from tests.servers import LocalRedis, free_port

pytestmark = pytest.mark.integration


async def test_concurrent_deliveries_take_fewer_commands_than_deliveries(
    redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cost is per command, in a pipeline too: count the commands it packs."""
    packed: list[Any] = []
    pack = AbstractConnection.pack_command

    def counting(self: AbstractConnection, *args: Any) -> list[bytes]:
        packed.append(args[0])
        return pack(self, *args)

    monkeypatch.setattr(AbstractConnection, "pack_command", counting)
    store = RedisDedupeStore(redis.url, namespace=f"test-{uuid.uuid4().hex[:8]}", ttl=60, lease=30)
    await store.start()
    try:
        await store.claim("warm-up", wait=1)  # connects, loads the script
        packed.clear()
        ids = [f"d{n}" for n in range(200)]
        claims = await asyncio.gather(*(store.claim(i, wait=1) for i in ids))
        await asyncio.gather(*(store.commit(i) for i in ids))
        again = await asyncio.gather(*(store.claim(i, wait=1) for i in ids))
    finally:
        await store.stop()
    assert claims == [Claim.NEW] * 200 and again == [Claim.DUPLICATE] * 200
    assert len(packed) < 200, f"{len(packed)} commands for 600 operations issued together"


async def test_operations_of_one_batch_run_in_the_order_issued(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(
            batcher.execute("claim", key, "inflight:a", 30_000),
            batcher.execute("claim", key, "inflight:b", 30_000),
            batcher.execute("release", key, "inflight:b", 0),
            batcher.execute("extend", key, "inflight:a", 60_000),
            batcher.execute("commit", key, "", 60_000),
            batcher.execute("claim", key, "inflight:c", 30_000),
            batcher.execute("release", key, "inflight:a", 0),
        )
        alone = await batcher.execute("claim", f"{key}-2", "inflight:d", 30_000)  # at low load it leaves at once
        assert 59_000 < await client.pttl(key) <= 60_000
    finally:
        await batcher.close()
        await client.aclose()
    assert replies == ["new", "inflight:a", "0", "1", "1", "done", "0"]
    assert alone == "new"


async def test_an_error_reply_fails_its_batch_and_the_next_batch_is_served(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        await client.rpush(f"{key}-list", "not a dedupe mark")
        results = await asyncio.gather(
            batcher.execute("claim", f"{key}-1", "inflight:a", 30_000),
            batcher.execute("claim", f"{key}-list", "inflight:b", 30_000),
            return_exceptions=True,
        )
        assert all(isinstance(result, ResponseError) for result in results), results
        assert await batcher.execute("claim", f"{key}-2", "inflight:c", 30_000) == "new"
    finally:
        await batcher.close()
        await client.aclose()


async def test_the_script_goes_by_digest_and_by_text_to_a_server_that_lost_it(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    batcher = Batcher(client)
    key = f"test-{uuid.uuid4().hex}"
    try:
        assert await batcher.execute("claim", f"{key}-1", "inflight:a", 30_000) == "new"
        by_digest = await script_calls(client, "evalsha")
        assert await batcher.execute("claim", f"{key}-2", "inflight:b", 30_000) == "new"
        assert await script_calls(client, "evalsha") == by_digest + 1, "a known script is not sent again"
        await client.script_flush()  # what a restart or a failover to a fresh replica does
        assert await batcher.execute("claim", f"{key}-3", "inflight:c", 30_000) == "new"
        assert await client.get(f"{key}-3") == "inflight:c", "run once, by text"
        assert await batcher.execute("claim", f"{key}-3", "inflight:d", 30_000) == "inflight:c"
    finally:
        await batcher.close()
        await client.aclose()


async def script_calls(client: Redis, command: str) -> int:
    stats: dict[str, dict[str, Any]] = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_an_unreachable_server_fails_every_operation_with_a_redis_error() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    batcher = Batcher(client)
    try:
        calls = (batcher.execute("claim", f"k{n}", "inflight:a", 1000) for n in range(5))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, RedisError | OSError) for result in results), results
    finally:
        await batcher.close()
        await client.aclose()


class BrokenScriptClient:
    """A client whose script calls fail with an error that is not a RedisError."""

    async def evalsha(self, *args: Any) -> Any:
        raise TypeError("not a Redis error")

    eval = evalsha


async def test_an_unexpected_error_reaches_every_caller_instead_of_leaving_them_waiting() -> None:
    batcher = Batcher(cast(Redis, BrokenScriptClient()))
    calls = (batcher.execute("claim", f"k{n}", "inflight:a", 1000) for n in range(3))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(result, TypeError) for result in results), results
    with pytest.raises(TypeError):  # the batcher is not stuck: a later operation is sent, and answered
        await asyncio.wait_for(batcher.execute("commit", "after", "", 1000), 5)
