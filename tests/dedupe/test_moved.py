"""A demoted node of a single-shard cluster answers MOVED, not READONLY: the pooled connections go too."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import MovedError, ReadOnlyError, RedisError

from relay.dedupe.redis_batch import Batcher


class Pool:
    def __init__(self) -> None:
        self.disconnected = 0

    async def disconnect(self, *, inuse_connections: bool = False) -> None:
        self.disconnected += 1


class Pipe:
    """A pipeline whose every call is answered with `error`, as `raise_on_error=False` gives it back."""

    def __init__(self, error: RedisError) -> None:
        self.error = error
        self.calls = 0

    def evalsha(self, *args: Any) -> None:
        self.calls += 1

    async def execute(self, *, raise_on_error: bool) -> list[Any]:
        return [self.error] * self.calls


class DemotedNode:
    """A client whose every script call is refused as a demoted node refuses it."""

    def __init__(self, error: RedisError) -> None:
        self.error = error
        self.connection_pool = Pool()

    async def evalsha(self, *args: Any) -> Any:
        raise self.error

    def pipeline(self, *, transaction: bool) -> Pipe:
        return Pipe(self.error)

    async def eval(self, *args: Any) -> Any:
        raise self.error


@pytest.mark.parametrize("by_slot", [False, True], ids=["one-call", "per-slot"])
@pytest.mark.parametrize("error", [MovedError("3999 127.0.0.1:6381"), ReadOnlyError("READONLY")], ids=["moved", "ro"])
async def test_a_demoted_node_makes_the_store_connect_again(error: RedisError, by_slot: bool) -> None:
    """Review finding: only READONLY closed the pooled connections. A cluster-mode node demoted while alive (a
    managed single-shard Redis's failover) answers MOVED, which redis-py raises as MovedError on the same pooled
    connection: every batch failed with 503 `dedupe_error` until a restart, /readyz still ready."""
    client = DemotedNode(error)
    batcher = Batcher(client)  # type: ignore[arg-type]
    batcher._by_slot = by_slot  # a cluster-mode server: one script call per hash slot, in a pipeline
    with pytest.raises(type(error)):
        await batcher.execute("claim", "k", "inflight:a", 30_000)
    await batcher.close()
    assert client.connection_pool.disconnected == 1
