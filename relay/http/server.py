"""uvicorn, configured for the relay: uvloop and httptools, readiness-first shutdown, header time and size bounds."""

from __future__ import annotations

import asyncio
import gc
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

# CPython collects its youngest generation every 700 container allocations, and every collection of
# the oldest one walks every object of the process: the imported libraries included. Under load that
# cost the relay 7% of its throughput and doubled its p99 (docs/performance.md). What exists once the
# app is built lives as long as the process, so it is frozen out of every later collection, and the
# young generation is collected ten times less often. Reference cycles are still collected.
GC_THRESHOLDS = (7000, 20, 20)

# A scope extension of GuardedHttpTools: present once the whole request body has been received, so
# the app reads it without arming a timer (relay.webhook.read_body). Under any other server it is
# absent, and the app bounds the wait itself.
BODY_RECEIVED = "mytpe.relay.body_received"
PROBES = frozenset((b"/healthz",))
"""Request targets served past uvicorn's concurrency ceiling (GuardedHttpTools.on_headers_complete): liveness
only. Readiness keeps the ceiling: a pod there answers webhooks 503, and should leave the rotation."""

# GuardedHttpTools subclasses uvicorn's HttpToolsProtocol, which is not a public API: these are the hooks
# it overrides and calls, and a uvicorn release may change any of them. So the relay serves only under
# the uvicorn versions it is tested on (pyproject.toml requires the same range): `serve` refuses any
# other with one line rather than serving with bounds that may no longer hold.
TESTED_UVICORN = ((0, 54), (0, 55))  # at least 0.54, below 0.55
HOOKS = (
    "connection_made",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
    "connection_lost",
)


def unsupported_uvicorn(version: str | None = None) -> str | None:
    """Why the installed uvicorn (or `version`) cannot serve the relay, or None when it is a tested one."""
    version = uvicorn.__version__ if version is None else version
    (low_major, low_minor), (high_major, high_minor) = TESTED_UVICORN
    tested = f">={low_major}.{low_minor},<{high_major}.{high_minor}"
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        major, minor = -1, -1
    if not (low_major, low_minor) <= (major, minor) < (high_major, high_minor):
        return f"uvicorn {version} is not supported: the relay's HTTP protocol is tested on uvicorn {tested}"
    missing = [hook for hook in HOOKS if not callable(getattr(HttpToolsProtocol, hook, None))]
    if missing:
        return f"uvicorn {version} lacks HttpToolsProtocol.{', .'.join(missing)}, which the relay's protocol overrides"
    return None


def tune_gc() -> None:
    """Freeze what exists now out of the collector and space its collections (the `serve` process only)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class RelayServer(uvicorn.Server):
    """On the first SIGTERM, call `on_stopping` (readiness answers 503) and keep serving for `delay`
    seconds so the load balancer stops routing here; then uvicorn's own graceful shutdown runs:
    stop accepting, drain in-flight requests (bounded), then the app's lifespan flushes Kafka.
    A second SIGTERM, or SIGINT, skips the rest of the delay. A SIGINT after uvicorn's shutdown has begun and
    before the app's own has started is uvicorn's force exit: the app's shutdown (flush, spool close) is then
    skipped; answers given stand (each waited for durability), and nothing still in flight was answered 2xx.
    One that comes once the app's shutdown runs changes nothing there.
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
      that sends headers slowly (slowloris) holds a connection forever. The clock starts when the
      connection opens, and again after each response (allowing the keep-alive idle time first);
      it stops as soon as a request's headers are complete. One watchdog timer per connection checks
      the deadline: the hot path only writes it (a timer armed and cancelled per request cost more).
    - Size: httptools has no limit on the header block (h11 stops at 16 KiB). Past `max_header_bytes`
      the request is refused with 400 and the connection closed, before anything reaches the app. The
      URL and each header are counted as the parser hands them over. And since httptools gathers one
      header's name or value in its own buffer until it ends, the reads that arrive while a head is under
      way are counted too, raw (`data_received`), against twice the bound (the raw head also holds the
      method, the version, line ends and spaces the first count leaves out): a value that never ends is
      refused there, give or take the two reads not counted (until 2026-12-06 the header timeout alone
      held it, growing all the while). A chunked body's trailer fields go through the same buffers after
      the head: what a read inside one body holds besides the body (chunk sizes, trailers) is counted, and
      past twice the bound plus eight bytes per body byte the connection is closed (until 2026-12-06 the
      body timeout alone held such a trailer).

    It also tells the app, by the scope extension BODY_RECEIVED, when a request's body is complete.

    What it costs (`bench/run.py --only relay-memory,relay-memory-plain`: the same app and uvicorn settings
    with this protocol and with the stock one): in isolation, raw ASGI, 23.8 against 20.8 CPU µs per
    request; in four alternated rounds of the relay on a shared machine, within the noise (guarded/plain
    CPU µs per webhook 168/174, 150/209, 173/185, 171/178); in the committed run of 2026-12-03 (one round
    each), 167 against 151 µs. docs/performance.md has the runs.
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 16384
    _watchdog: asyncio.TimerHandle | None = None
    _head_deadline: float | None = None  # None while no request head is awaited
    _header_bytes: int = 0
    _in_head: bool = False  # between a request's first byte and the end of its head
    _began: bool = False  # a request's head began during the current read
    _head_received: int = 0  # bytes of reads that began and ended inside that head
    _in_body: bool = False  # between the end of a request's head and the end of its message
    _body_bytes = _framing = 0  # of the message's reads counted: the body uvicorn kept, and the rest

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + self.header_timeout
        self._watchdog = self.loop.call_later(self.header_timeout, self._watch)

    def data_received(self, data: bytes) -> None:
        """A read that began and ended inside one head is all head: counted. A read in which a head began (it may
        hold the previous request's end) or ended is not, so no head within the bound is refused. A read that began
        and ended inside one body: what it holds besides the body uvicorn kept (chunk sizes, trailers, and a body
        discarded after an early answer) is framing, counted."""
        in_head, in_body, self._began = self._in_head, self._in_body, False
        kept = len(self.cycle.body) if in_body else 0
        HttpToolsProtocol.data_received(self, data)
        if self._began:
            return
        if in_head and self._in_head:
            self._head_received += len(data)
            if self._head_received > 2 * self.max_header_bytes and not self.transport.is_closing():
                logger.info("refused a request head over %d bytes", self.max_header_bytes)
                self.send_400_response("Invalid HTTP request received.")
        elif in_body and self._in_body:
            body = len(self.cycle.body) - kept  # what this read added to the body (the app reads it in its task)
            self._body_bytes += body
            self._framing += len(data) - body
            if self._framing > 2 * self.max_header_bytes + 8 * self._body_bytes and not self.transport.is_closing():
                logger.info("closed a request whose body framing passed %d bytes", self._framing)
                self.transport.close()  # its head went to the app, which may be answering: no 400 of ours

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._head_received = self._body_bytes = self._framing = 0
        self._in_head = self._began = True
        self._in_body = False

    # Called once per header by the parser: the count is inline, and the base method named directly.
    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._head_too_large()
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._head_too_large()
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        """The liveness probe (`GET /healthz`, as the kubelet sends it) is served past uvicorn's `limit_concurrency`:
        idle keep-alive connections (an ingress's pool) count against it, and a liveness probe answered 503 there
        would restart a busy but healthy pod, moving its load to the others. Its answer is small and waits on
        nothing. `/readyz` keeps the ceiling: a pod there answers webhooks 503, and leaves the rotation."""
        self._head_deadline = None
        self._in_head, self._in_body = False, True
        if self.limit_concurrency is None or self.url not in PROBES or self.parser.get_method() != b"GET":
            super().on_headers_complete()
            return
        limit, self.limit_concurrency = self.limit_concurrency, None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()
        self.scope.setdefault("extensions", {})[BODY_RECEIVED] = {}

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.time() + self.timeout_keep_alive + self.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    def _head_too_large(self) -> None:
        # Raised inside a parser callback: httptools turns it into HttpParserCallbackError, which
        # uvicorn answers with 400 and a closed connection.
        raise ValueError(f"request head over {self.max_header_bytes} bytes")

    def _watch(self) -> None:
        """Close the connection if a request head is overdue; otherwise look again when it would be."""
        self._watchdog = None
        if self.transport.is_closing():
            return
        deadline, now = self._head_deadline, self.loop.time()
        if deadline is not None and now >= deadline and (self.cycle is None or self.cycle.response_complete):
            logger.info("closed a connection whose request headers took over %.1fs", self.header_timeout)
            self.transport.close()
            return
        delay = deadline - now if deadline is not None and deadline > now else self.header_timeout
        self._watchdog = self.loop.call_later(delay, self._watch)


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
        # A ceiling on connections and tasks behind the relay's own, politer admission limit: past it uvicorn
        # answers 503 (it refuses no connection), the liveness probe aside (GuardedHttpTools).
        "limit_concurrency": settings.max_in_flight * 2,
        "server_header": False,
        # The relay never reads the client's address: uvicorn's X-Forwarded-* middleware would only cost.
        "proxy_headers": False,
        # One structured line per request comes from the relay itself (logger relay.requests, DEBUG).
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
