"""The dedupe batcher's linger (pure logic: a stand-in for redis-py's client that records each script call and
answers it when the test says; the script against a real redis-server is in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.dedupe.redis_batch import Batcher
from relay.dedupe.redis_script import line


class HeldClient:
    """Records the keys of each call; a call answers when the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.release: list[asyncio.Event] = []

    async def evalsha(self, digest: str, count: int, *args: Any) -> str:
        keys = list(args[:count])
        self.calls.append(keys)
        held = asyncio.Event()
        self.release.append(held)
        await held.wait()
        return "\n".join("+new" for _ in keys)


def _claim(batcher: Batcher, key: str) -> asyncio.Future[Any]:
    return batcher.submit("claim", key, line("claim", "t", 1000))


async def _until(condition: Any) -> None:
    for _ in range(5000):  # bounded (5 s): a few turns of the loop, or a 1 s linger
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("not reached")


async def test_a_batch_after_an_idle_moment_leaves_at_once() -> None:
    client = HeldClient()
    batcher = Batcher(client, linger=60.0)  # type: ignore[arg-type]
    first = _claim(batcher, "a")
    await _until(lambda: client.calls)  # sent without the linger (60 s would time the test out)
    client.release[0].set()
    assert await asyncio.wait_for(first, 5) == "new"
    await batcher.close()


async def test_operations_queued_behind_a_batch_wait_the_linger_for_more_to_join() -> None:
    """Without the linger, `b` would leave alone as soon as `a`'s reply came, and `c` after it: three calls."""
    client = HeldClient()
    batcher = Batcher(client, linger=1.0)  # type: ignore[arg-type]
    replies = [_claim(batcher, "a")]
    await _until(lambda: client.calls)
    replies.append(_claim(batcher, "b"))  # queued while `a`'s batch is in flight
    client.release[0].set()
    await _until(replies[0].done)
    replies.append(_claim(batcher, "c"))  # during the linger: joins `b`
    await _until(lambda: len(client.calls) == 2)
    client.release[1].set()
    assert await asyncio.wait_for(asyncio.gather(*replies), 5) == ["new", "new", "new"]
    assert client.calls == [[b"a"], [b"b", b"c"]]
    await batcher.close()


async def test_closing_during_the_linger_fails_what_waits_with_the_stores_error() -> None:
    client = HeldClient()
    batcher = Batcher(client, linger=60.0)  # type: ignore[arg-type]
    first = _claim(batcher, "a")
    await _until(lambda: client.calls)
    queued = _claim(batcher, "b")
    client.release[0].set()
    await _until(first.done)
    await asyncio.wait_for(batcher.close(), 5)  # not the linger's 60 s
    assert queued.done() and "stopping" in str(queued.exception())
    assert client.calls == [[b"a"]]
