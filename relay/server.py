"""uvicorn, configured for the relay: uvloop and httptools, readiness-first shutdown, header time and size bounds."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.settings import Settings

logger = logging.getLogger(__name__)

# The fastest pair uvicorn supports (C event loop, C HTTP parser); bench/ serves its baselines with them too.
LOOP_IMPLEMENTATION = "uvloop"
HTTP_IMPLEMENTATION = "httptools"


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


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with two bounds it lacks: header time and header size.

    - Time: uvicorn has no bound on the time a request's headers may take to arrive, so a client
      that sends headers slowly (slowloris) holds a connection forever. The timer starts when the
      connection opens, and again after each response (allowing the keep-alive idle time first);
      it stops as soon as a request's headers are complete.
    - Size: httptools has no limit on the header block (h11 stops at 16 KiB). Past `max_header_bytes`
      the request is refused with 400 and the connection closed, before anything reaches the app.
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 16384
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer(self.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer(self.timeout_keep_alive + self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            # Raised inside a parser callback: httptools turns it into HttpParserCallbackError, which
            # uvicorn answers with 400 and a closed connection.
            raise ValueError(f"request head over {self.max_header_bytes} bytes")

    def _arm_header_timer(self, delay: float) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(delay, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        logger.info("closed a connection whose request headers took over %.1fs", self.header_timeout)
        self.transport.close()


def server_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration, used by `serve` and by the tests."""
    protocol = type("RelayHttpTools", (GuardedHttpTools,), {"header_timeout": settings.header_timeout_seconds})
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "http": protocol,
        "loop": LOOP_IMPLEMENTATION,
        "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
        # A hard ceiling on connections and tasks behind the relay's own, politer admission limit.
        "limit_concurrency": settings.max_in_flight * 2,
        "server_header": False,
        # One structured line per request comes from the relay itself (logger relay.requests, DEBUG).
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
