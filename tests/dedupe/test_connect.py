"""Closing the Redis clients of one URL (the store's, and a Sentinel URL's sentinels): all at once, within
one bound, never raising. A real frozen TLS server is in tests/integration/test_redis_production.py; this
holds the concurrency a Sentinel URL's several clients rely on, with clients that stand for redis-py's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from relay.dedupe import connect
from relay.dedupe.connect import RedisConnection


class HangingClient:
    """A client whose close never ends (a server that never answers it)."""

    def __init__(self) -> None:
        self.closing = False

    async def aclose(self) -> None:
        self.closing = True
        await asyncio.Event().wait()


async def test_every_client_is_closed_at_once_within_one_bound_and_a_hang_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/guarantees.md §7: a Sentinel URL's clients close at once, 2 s in all. Closed one after another,
    the second client's close would never start while the first one hangs."""
    monkeypatch.setattr(connect, "STORE_TIMEOUT_SECONDS", 0.05)
    clients = [HangingClient() for _ in range(3)]
    connection = RedisConnection(cast(Redis, clients[0]), tuple(cast(Any, client) for client in clients[1:]))
    with caplog.at_level(logging.WARNING, logger="relay.dedupe.connect"):
        await asyncio.wait_for(connection.aclose(), 10)  # returns: never raises
    assert [client.closing for client in clients] == [True, True, True]
    assert "redis: a connection did not close cleanly (TimeoutError); not waited for" in caplog.text
