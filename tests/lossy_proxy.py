"""A loopback TCP proxy that loses a server's answers on demand, for tests of an answer lost after the
command ran.

Every byte goes both ways, except the server's while `losing()` holds: those are dropped and counted.
A dropped answer is the proof that the server received and ran the command, so a test built on it does
not rest on timing (a server put to sleep cannot say whether the command reached it before the client
gave up).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LossyProxy:
    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._losing = False
        self._lost = asyncio.Event()
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"redis://{host}:{port}/0"

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def losing(self, *, within: float = 30.0) -> AsyncIterator[None]:
        """Drop the server's answers inside the block; on leaving it, wait (at most `within` seconds) until
        at least one answer was dropped, else fail: the command never reached the server."""
        self._lost.clear()
        self._losing = True
        try:
            yield
            await asyncio.wait_for(self._lost.wait(), within)
        finally:
            self._losing = False

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        pumps = [
            asyncio.create_task(self._pump(client_reader, server_writer, lossy=False)),
            asyncio.create_task(self._pump(server_reader, client_writer, lossy=True)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)  # one side closed: close both
        finally:
            for pump in pumps:
                pump.cancel()
                self._pumps.discard(pump)
            for writer in (client_writer, server_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, lossy: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if lossy and self._losing:
                    self._lost.set()
                    continue
                writer.write(data)
                await writer.drain()
