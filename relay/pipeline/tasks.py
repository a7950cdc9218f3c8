"""Tasks a delivery leaves running after its answer, held so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

logger = logging.getLogger(__name__)


class Tasks:
    """Started in the caller's context; `finish` waits for them up to a bound, then cancels the rest."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._running)

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work`; it handles its own errors, and one it let through is logged here, never dropped."""
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # a bug: said, with its traceback
            logger.error("a delivery's background step failed: %s", type(exc).__name__, exc_info=exc)

    async def finish(self, timeout: float, cleanup: float) -> int:
        """Wait up to `timeout` for the tasks running now; cancel the rest and say how many that was. Those
        cancelled run their cleanup for up to `cleanup` seconds more; past it, they are cancelled again."""
        tasks = list(self._running)
        cancelled = await stop_waiting(tasks, timeout)
        await stop_waiting(list(cancelled), cleanup)
        await asyncio.gather(*tasks, return_exceptions=True)  # each cut one ends at its cancel: none catches it
        return len(cancelled)


async def stop_waiting(futures: Sequence[asyncio.Future[Any]], timeout: float) -> set[asyncio.Future[Any]]:
    """Wait up to `timeout` for `futures`; cancel those still pending and return them."""
    if not futures:
        return set()
    _, pending = await asyncio.wait(futures, timeout=timeout)
    for future in pending:
        future.cancel()
    return pending
