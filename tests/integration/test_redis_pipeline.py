"""Commands of concurrent callers share round trips to a real redis-server, each with its own reply."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from relay.dedupe.redis_pipeline import Pipeline
from tests.servers import LocalRedis, free_port

pytestmark = pytest.mark.integration


class CountingClient:
    """A Redis client that counts the pipelines (round trips) made on it."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, **options: Any) -> Any:
        self.pipelines += 1
        return self.client.pipeline(**options)


async def test_concurrent_commands_share_round_trips_and_get_their_own_replies(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    counting = CountingClient(client)
    pipeline = Pipeline(cast(Redis, counting))
    prefix = uuid.uuid4().hex
    try:
        replies = await asyncio.gather(*(pipeline.execute("INCRBY", f"{prefix}:{n}", n) for n in range(200)))
        assert replies == list(range(200))
        assert 1 <= counting.pipelines < 200, "commands issued together went out together"
        again = await pipeline.execute("GET", f"{prefix}:7")  # at low load a command leaves at once
        assert again == "7"
    finally:
        await pipeline.close()
        await client.aclose()


async def test_an_error_reply_fails_only_its_own_command(redis: LocalRedis) -> None:
    client = Redis.from_url(redis.url, decode_responses=True)
    pipeline = Pipeline(client)
    key = uuid.uuid4().hex
    try:
        await pipeline.execute("SET", key, "not a number")
        results = await asyncio.gather(
            pipeline.execute("INCR", key), pipeline.execute("GET", key), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError)
        assert results[1] == "not a number"
    finally:
        await pipeline.close()
        await client.aclose()


async def test_an_unreachable_server_fails_every_command_with_a_redis_error() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    pipeline = Pipeline(client)
    try:
        results = await asyncio.gather(*(pipeline.execute("GET", f"k{n}") for n in range(5)), return_exceptions=True)
        assert all(isinstance(result, RedisError | OSError) for result in results), results
    finally:
        await pipeline.close()
        await client.aclose()


class BrokenPipelineClient:
    """A client whose pipelines fail with an error that is not a RedisError."""

    def pipeline(self, **options: Any) -> Any:
        class Broken:
            def execute_command(self, *command: Any) -> None:
                return None

            async def execute(self, **options: Any) -> list[Any]:
                raise TypeError("not a Redis error")

        return Broken()


async def test_an_unexpected_error_reaches_every_caller_instead_of_leaving_them_waiting() -> None:
    pipeline = Pipeline(cast(Redis, BrokenPipelineClient()))
    results = await asyncio.wait_for(
        asyncio.gather(*(pipeline.execute("GET", f"k{n}") for n in range(3)), return_exceptions=True), 5
    )
    assert all(isinstance(result, TypeError) for result in results), results
    with pytest.raises(TypeError):  # the pipeline is not stuck: a later command is sent, and answered
        await asyncio.wait_for(pipeline.execute("GET", "after"), 5)
