"""How a stopped command still finishes its cleanup: `to_the_end` (pure asyncio, no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from relay.ops.interrupt import to_the_end


async def test_a_cancellation_during_the_cleanup_waits_for_it_then_goes_on() -> None:
    """Review finding: `replay` under `as_ctrl_c` was cancelled again by a signal that came while its `finally`
    flushed the producer (a SIGTERM after the run, Kafka slow): the drain that sends the commits and releases
    never ran, and their claims stayed in flight for the next run."""
    entered, release = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def cleanup() -> None:
        entered.set()
        await release.wait()  # the producer's flush
        steps.append("flushed")
        await asyncio.sleep(0)  # the drain of the commits
        steps.append("drained")

    async def command() -> str:
        try:
            return "ran"
        finally:
            await to_the_end(cleanup())
            steps.append("after")  # not reached: the cancellation goes on once the cleanup ended

    task = asyncio.create_task(command())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()  # the signal, during the cleanup
    await asyncio.sleep(0.01)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["flushed", "drained"]


async def test_a_cleanup_cancelled_itself_still_ends() -> None:
    """asyncio.run cancels every task after a second Ctrl-C: the cleanup's own cancellation ends the wait."""

    async def cleanup() -> None:
        await asyncio.sleep(3600)

    inner = asyncio.ensure_future(cleanup())
    outer = asyncio.create_task(to_the_end(inner))
    await asyncio.sleep(0)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 5)


async def test_without_a_cancellation_the_cleanups_answer_is_returned() -> None:
    async def cleanup() -> int:
        await asyncio.sleep(0)
        return 7

    assert await to_the_end(cleanup()) == 7
