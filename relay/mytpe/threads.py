"""How the MyTPE API client runs a call: on a daemon thread of its own (`in_thread`), and, for a call whose answer
holds a one-time secret, to its end even when its caller is cancelled (`finished`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("relay.mytpe.api")  # the client's: these lines are its own


async def in_thread(function: Callable[..., Any], *args: Any, name: str = "mytpe-api") -> Any:
    """`asyncio.to_thread`, on a daemon thread of its own. The default executor's threads are waited for
    before the process exits, so a call MyTPE does not answer held the relay's exit for up to its timeout
    per read (a drift check in flight at SIGTERM); a daemon thread is not waited for, and the answer of a
    call abandoned so is dropped. A few calls a minute: a thread each costs nothing that matters. The sources
    file's reads use it too (`name` "sources-read"), for a read that hangs (a stuck network mount)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result, error = context.run(function, *args), None
        except BaseException as exc:  # passed to the awaiting call as it is, as to_thread's executor does
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: no one waits for it any more
            loop.call_soon_threadsafe(_settle, answer, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await answer


def _settle(answer: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if answer.done():  # its caller stopped waiting
        return
    if error is None:
        answer.set_result(result)
    else:
        answer.set_exception(error)


async def finished(call: Coroutine[Any, Any, Any]) -> Any:
    """`call`'s answer even when the caller is cancelled (Ctrl-C) meanwhile: a one-time secret in it would
    otherwise be lost. The cancellation is then passed on at the caller's next wait, by which time the
    commands hold the secret (installed, or printed once). A call that fails after the cancellation raises the
    cancellation, its failure as the cause: the command stops as asked, rather than acting on the failure (an
    outcome unknown would be watched for, then made again). A second cancellation abandons the call."""
    work = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError as cancelled:
        try:
            answer = await work
        except Exception as exc:
            if getattr(exc, "maybe_applied", False):  # said: MyTPE may have acted, and nothing else will say it now
                logger.warning("stopped as asked; %s, and MyTPE may have acted (`webhook status` shows it)", exc)
            raise cancelled from exc
        task = asyncio.current_task()
        if task is not None:
            task.cancel()
        return answer
