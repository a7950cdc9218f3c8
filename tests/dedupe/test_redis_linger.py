"""The dedupe batcher's linger (pure logic: a stand-in for redis-py's client that records each script call and
answers it when the test says; the script against a real redis-server is in tests/integration). The linger is
counted in turns of the event loop, so these tests count turns too, never time."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.dedupe.redis_batch import Batcher
from relay.dedupe.redis_script import line

LONG = 1000  # turns: far more than any wait below (at most 50)


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


async def _within_turns(condition: Any, turns: int = 50) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not within {turns} turns of the loop")


async def test_a_batch_after_an_idle_moment_leaves_at_once() -> None:
    """The first batch, and one after a reply that left nothing queued: neither waits the linger."""
    client = HeldClient()
    batcher = Batcher(client, turns=LONG)  # type: ignore[arg-type]
    first = _claim(batcher, "a")
    await _within_turns(lambda: client.calls)
    client.release[0].set()
    await _within_turns(first.done)
    second = _claim(batcher, "b")  # nothing was queued behind `a`: no linger after it
    await _within_turns(lambda: len(client.calls) == 2)
    client.release[1].set()
    await _within_turns(second.done)
    assert [first.result(), second.result()] == ["new", "new"]
    await batcher.close()


async def test_operations_queued_behind_a_batch_wait_the_linger_for_more_to_join() -> None:
    """Without the linger, `b` would leave alone as soon as `a`'s reply came, and `c` after it: three calls."""
    client = HeldClient()
    batcher = Batcher(client, turns=LONG)  # type: ignore[arg-type]
    replies = [_claim(batcher, "a")]
    await _within_turns(lambda: client.calls)
    replies.append(_claim(batcher, "b"))  # queued while `a`'s batch is in flight
    client.release[0].set()
    await _within_turns(replies[0].done)
    replies.append(_claim(batcher, "c"))  # during the linger: joins `b`
    await _within_turns(lambda: len(client.calls) == 2, LONG + 50)
    client.release[1].set()
    await _within_turns(lambda: all(reply.done() for reply in replies))
    assert [reply.result() for reply in replies] == ["new", "new", "new"]
    assert client.calls == [[b"a"], [b"b", b"c"]]
    await batcher.close()


async def test_the_default_linger_lets_what_the_reply_released_join_the_next_batch() -> None:
    """Two turns: an operation issued one turn after the reply's callback joins the batch queued behind;
    with one turn, or none, it would leave in a batch of its own."""
    client = HeldClient()
    batcher = Batcher(client)  # type: ignore[arg-type]
    replies = [_claim(batcher, "a")]
    await _within_turns(lambda: client.calls)
    replies.append(_claim(batcher, "b"))
    loop = asyncio.get_running_loop()
    replies[0].add_done_callback(lambda _: loop.call_soon(lambda: replies.append(_claim(batcher, "c"))))
    client.release[0].set()
    await _within_turns(lambda: len(client.calls) == 2)
    client.release[1].set()
    await _within_turns(lambda: len(replies) == 3 and all(reply.done() for reply in replies))
    assert client.calls == [[b"a"], [b"b", b"c"]]
    await batcher.close()


async def test_closing_during_the_linger_fails_what_waits_with_the_stores_error() -> None:
    client = HeldClient()
    batcher = Batcher(client, turns=LONG)  # type: ignore[arg-type]
    first = _claim(batcher, "a")
    await _within_turns(lambda: client.calls)
    queued = _claim(batcher, "b")
    client.release[0].set()
    await _within_turns(first.done)
    await batcher.close()
    assert queued.done() and "stopping" in str(queued.exception())
    assert client.calls == [[b"a"]]
