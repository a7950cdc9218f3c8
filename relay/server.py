"""uvicorn's server, with readiness turned false before the drain starts."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

logger = logging.getLogger(__name__)


class RelayServer(uvicorn.Server):
    """On the first SIGTERM, call `on_stopping` (readiness answers 503) and keep serving for `delay`
    seconds so the load balancer stops routing here; then uvicorn's own graceful shutdown runs:
    stop accepting, drain in-flight requests (bounded), then the app's lifespan flushes Kafka.
    A second SIGTERM, or SIGINT, skips the rest of the delay.
    """

    def __init__(self, config: uvicorn.Config, *, on_stopping: Callable[[], None], delay: float) -> None:
        super().__init__(config)
        self._on_stopping = on_stopping
        self._delay = delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig != signal.SIGTERM or self._stopping or self._delay <= 0 or loop is None:
            super().handle_exit(sig, frame)
            return
        self._stopping = True
        self._on_stopping()
        logger.info("SIGTERM: not ready; draining in %.1fs", self._delay)
        exit_later = super().handle_exit
        loop.call_soon_threadsafe(loop.call_later, self._delay, exit_later, sig, None)
