"""How an operator command is stopped when it must finish what it holds (a one-time secret, a replay's commits):
SIGTERM and SIGHUP as Ctrl-C is."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TerminatedBy(Exception):
    """The command was stopped by SIGTERM or SIGHUP (a CI job cancelled, a terminal closed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def as_ctrl_c(command: Coroutine[Any, Any, T]) -> T:
    """`command`, which SIGTERM and SIGHUP stop as asyncio stops it on Ctrl-C (its task cancelled), rather than
    the process dying at once: a call whose answer holds a one-time secret finishes, and the secret is installed
    or printed once (`only_copy`) on the way out. Only the first request to stop cancels (a signal's, or Ctrl-C's:
    asyncio's SIGINT handler cancels the same task); a later signal is only noted, since a second cancellation
    would abandon that call and its secret (SIGKILL remains). Ctrl-C is asyncio's own: after a signal, the first
    Ctrl-C cancels again, and after a Ctrl-C, the second raises KeyboardInterrupt and asyncio.run cancels every
    task (the way to abandon the call). A signal the command was
    started ignoring (nohup, `trap '' HUP`) stays ignored. Raises TerminatedBy once one came (KeyboardInterrupt for
    Ctrl-C alone), even if the command ended meanwhile."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None  # noqa: S101 - run by asyncio.run
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        if task.cancelling() == 0:  # not after another signal, nor after Ctrl-C: asyncio's SIGINT cancels too
            task.cancel()

    handled = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    for signum in handled:
        loop.add_signal_handler(signum, stop, signum)
    try:
        code = await command
    except asyncio.CancelledError:
        raise _stopped(received) from None
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    if received or task.cancelling():  # it ended before the cancellation landed (a one-time call's last): said
        raise _stopped(received)
    return code


def _stopped(received: list[int]) -> BaseException:
    """What a stopped command raises: TerminatedBy for SIGTERM or SIGHUP, else KeyboardInterrupt (Ctrl-C, which
    the CLI answers 130). asyncio.run would raise CancelledError itself, a traceback, when `finished` passed the
    cancellation on once more than the SIGINT it counts."""
    return TerminatedBy(received[0]) if received else KeyboardInterrupt()


async def to_the_end(cleanup: Awaitable[T]) -> T:
    """Await `cleanup` to its end even when this task is cancelled meanwhile (a signal that comes while a command
    cleans up: its commits, its producer's flush), then pass the cancellation on. A cancellation of `cleanup`'s own
    (asyncio.run's, after a second Ctrl-C) still ends it."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
